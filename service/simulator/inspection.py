"""The simulator's own API for tests and the demo: task records, account counters and live
config under /_sim."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.simulator.config import KnobError
from service.simulator.simulator import Simulator
from service.simulator.state import Phase, Task
from service.simulator.wire import BodyError, read_json_object, simulator_of


async def _record(sim: Simulator, task: Task) -> dict[str, object]:
    now = sim.clock()
    if task.phase(now) is Phase.SUCCEEDED:
        await sim.ensure_rendered(task)  # so sha256s is filled for every ready task
    return task.to_public(now)


async def list_tasks(request: Request) -> Response:
    """GET /_sim/tasks: every task record, oldest first."""
    sim = simulator_of(request)
    tasks = sorted(sim.tasks.values(), key=lambda t: t.created_at)
    return JSONResponse([await _record(sim, task) for task in tasks])


async def get_task(request: Request) -> Response:
    """GET /_sim/tasks/{id}: one task record, or 404."""
    sim = simulator_of(request)
    task = sim.tasks.get(request.path_params["task_id"])
    if task is None:
        return JSONResponse({"detail": "unknown task"}, status_code=404)
    return JSONResponse(await _record(sim, task))


async def get_stats(request: Request) -> Response:
    """GET /_sim/stats: per protocol, tasks submitted, active now and at most, and 429s answered."""
    return JSONResponse(simulator_of(request).public_stats())


async def get_config(request: Request) -> Response:
    """GET /_sim/config: the live knobs, API key masked."""
    return JSONResponse(simulator_of(request).config.to_public())


async def patch_config(request: Request) -> Response:
    """PATCH /_sim/config: change knobs by name; an unknown or bad knob is a 422 naming it."""
    sim = simulator_of(request)
    try:
        changes = await read_json_object(request)
        sim.update_config(changes)
    except BodyError as exc:
        return JSONResponse({"detail": exc.message}, status_code=422)
    except KnobError as exc:
        return JSONResponse({"detail": str(exc), "knob": exc.knob}, status_code=422)
    return JSONResponse(sim.config.to_public())


def routes() -> list[Route]:
    """The /_sim inspection and control routes."""
    return [
        Route("/_sim/tasks", list_tasks, methods=["GET"]),
        Route("/_sim/tasks/{task_id}", get_task, methods=["GET"]),
        Route("/_sim/stats", get_stats, methods=["GET"]),
        Route("/_sim/config", get_config, methods=["GET"]),
        Route("/_sim/config", patch_config, methods=["PATCH"]),
    ]
