"""Composition root of the simulator: routes from every provider module, lifespan, image URLs."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from service.simulator import apiframe, bfl, cometapi, fal, inspection, replicate, runcomfy
from service.simulator.config import SimulatorConfig
from service.simulator.simulator import Simulator
from service.simulator.state import Phase
from service.simulator.wire import simulator_of


async def serve_image(request: Request) -> Response:
    """GET /delivery/{id}/sample.<ext> and /cdn/{id}/<n>.<ext>: the task's picture bytes.

    404 until the task has succeeded, for a wrong name or extension, and once
    delivery_url_ttl_s has passed since the task became ready (BFL: "delivery URLs expire
    after 10 minutes"). No auth: like the real delivery hosts, the URL is the credential.
    """
    sim = simulator_of(request)
    task = sim.tasks.get(request.path_params["task_id"])
    stem, _, ext = request.path_params["name"].rpartition(".")
    now = sim.clock()
    if task is None or stem not in ("sample", "0") or ext != task.fmt:
        return PlainTextResponse("Not Found", status_code=404)
    if task.phase(now) is not Phase.SUCCEEDED:
        return PlainTextResponse("Not Found", status_code=404)
    if now - task.done_at > sim.config.delivery_url_ttl_s:
        return PlainTextResponse("Not Found: the delivery URL has expired", status_code=404)
    task.download_count += 1  # counted at the start, so downloads in flight show up
    await anyio.sleep(sim.config.download_delay_s)
    await sim.ensure_rendered(task)
    return Response(
        task.images[0], media_type=task.content_type, headers={"Cache-Control": "private, no-transform"}
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown paths and wrong methods answer FastAPI-style JSON, as the providers do.
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_simulator_app(
    config: SimulatorConfig | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    rand: random.Random | None = None,
    clock: Callable[[], float] | None = None,
) -> Starlette:
    """Build the simulator app speaking BFL, CometAPI, Apiframe, RunComfy, Replicate and fal over HTTP.

    `transport` is used by the client that sends callbacks (tests may pass a mock);
    `rand` draws every task's fate (default: random.Random(config.seed)); `clock` returns
    epoch seconds (default time.time). The live state is ``app.state.simulator``. The base URL
    in polling and image URLs comes from each request, so any host and port work.
    """
    config = config or SimulatorConfig()
    simulator = Simulator(config, rand=rand or random.Random(config.seed), clock=clock or time.time)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with simulator.running(transport):
            yield

    routes = [
        *bfl.routes(),
        *cometapi.routes(),
        *apiframe.routes(),
        *replicate.routes(),  # before RunComfy's catch-all /v1/models/{path}
        *runcomfy.routes(),
        *fal.routes(),
        *inspection.routes(),
        Route("/delivery/{task_id}/{name}", serve_image, methods=["GET"]),
        Route("/cdn/{task_id}/{name}", serve_image, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.simulator = simulator
    return app
