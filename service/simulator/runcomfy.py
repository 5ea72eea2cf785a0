"""RunComfy Model API: POST /v1/models/{model}, then status, result and cancel per request.

Source: docs.runcomfy.com/model-apis (async queue endpoints, error codes) and the
flux-1-kontext/pro/edit model page, as summarised in providers.md section d. The Model API
documents no webhooks, so there are none here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.simulator.config import SimulatorConfig
from service.simulator.images import size_for_aspect_ratio
from service.simulator.state import FAILURES, Phase, Task
from service.simulator.wire import (
    BodyError,
    Dialect,
    admit,
    base_url_of,
    bearer_token,
    is_http_url,
    is_int,
    polled_task,
    read_json_object,
    refuse_past_active_limit,
    simulator_of,
)

ASPECT_RATIOS = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")
DEFAULT_ASPECT_RATIO = "16:9"  # the kontext edit schema's default
OUTPUT_FORMATS = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png", "webp": "webp"}

# (HTTP status, error_code, message) per neutral reason. 404001, 403001 and 400002 are from
# RunComfy's error-code page; the others are UNCONFIRMED guesses in the same numbering.
_ERRORS: dict[str, tuple[int, int, str]] = {
    "unauthenticated": (401, 401001, "Unauthorized"),
    "forbidden": (403, 403001, "PermissionDeniedError"),
    "not_found": (404, 404001, "ResourceNotFound"),
    "credits": (400, 400002, "InsufficientResources"),
    "invalid": (422, 422001, "InvalidInput"),
    "conflict": (409, 409001, "RequestNotCancellable"),
    "rate_limited": (429, 429001, "TooManyRequests"),
    "unavailable": (503, 503001, "ServiceUnavailable"),
    "too_large": (413, 413001, "PayloadTooLarge"),
}


@dataclass(frozen=True)
class ModelInputs:
    """The input fields the simulator acts on; body keys map 1:1 to the model's schema."""

    prompt: str
    seed: int | None
    width: int
    height: int
    fmt: str


def parse_inputs(model_path: str, body: Mapping[str, Any]) -> tuple[ModelInputs | None, str]:
    """Validate a submit body against the kontext schema; return (inputs, "") or (None, why)."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        return None, "prompt is required and must be a string"
    image = body.get("image_url")
    if model_path.endswith("/edit") and image is None:
        return None, "image_url is required for an edit model"
    if image is not None and not is_http_url(image):
        return None, "image_url must be a public http(s) URL"
    seed = body.get("seed")
    if seed is not None and not is_int(seed):
        return None, "seed must be an integer"
    ratio = body.get("aspect_ratio", DEFAULT_ASPECT_RATIO)
    if ratio not in ASPECT_RATIOS:
        return None, f"aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}"
    fmt = OUTPUT_FORMATS.get(body.get("output_format") or "jpeg")
    if fmt is None:
        return None, "output_format must be jpeg, png or webp"
    width, height = body.get("width"), body.get("height")
    if width is not None or height is not None:
        if not (is_int(width) and is_int(height) and 64 <= width <= 1440 and 64 <= height <= 1440):
            return None, "width and height must both be integers from 64 to 1440"
    else:
        # Real outputs are ~1 MP; a 512-pixel long side keeps tests and the demo fast.
        width, height = size_for_aspect_ratio(ratio)
    return ModelInputs(prompt=prompt, seed=seed, width=width, height=height, fmt=fmt), ""


def request_urls(base_url: str, request_id: str) -> dict[str, str]:
    """status_url, result_url and cancel_url of one request."""
    root = f"{base_url}/v1/requests/{request_id}"
    return {"status_url": f"{root}/status", "result_url": f"{root}/result", "cancel_url": f"{root}/cancel"}


def image_url(base_url: str, task: Task) -> str:
    """Where the request's picture is served."""
    return f"{base_url}/delivery/{task.id}/sample.{task.fmt}"


def result_payload(task: Task, now: float, base_url: str, config: SimulatorConfig) -> dict[str, Any]:
    """GET .../result: the output once completed, the error once failed, else the status."""
    phase = task.phase(now)
    payload: dict[str, Any] = {"request_id": task.id, "status": task.status(now)}
    if phase is Phase.SUCCEEDED:
        url = image_url(base_url, task)
        shaped = {"image": url} if config.runcomfy_result_shape == "image" else {"images": [url]}
        payload["output"] = shaped
    elif phase in FAILURES:
        kind = "GenerationError" if phase is Phase.FAILED else "ContentModerationError"
        message = "generation failed" if phase is Phase.FAILED else "content flagged by the safety checker"
        payload["error"] = {"type": kind, "message": message}
    return payload


def _error(status: int, reason: str, message: str) -> Response:
    code_status, code, name = _ERRORS.get(reason, (status, status * 1000 + 1, reason))
    return JSONResponse({"error_code": code, "message": message or name}, status_code=code_status)


def _not_found() -> Response:
    return JSONResponse({"error_code": 404001, "message": "ResourceNotFound"}, status_code=404)


_DIALECT = Dialect(protocol="runcomfy", read_key=bearer_token, error=_error)


async def submit(request: Request) -> Response:
    """POST /v1/models/{model_path}: 200 with request_id and the three request URLs."""
    refused = admit(request, _DIALECT, "submit")
    if refused is not None:
        return refused
    model_path = request.path_params["model_path"].strip("/")
    if not model_path:
        return _error(400, "invalid", "InvalidResourceIdentifier")
    try:
        body = await read_json_object(request)
    except BodyError as exc:
        return _error(0, "too_large" if exc.reason == "too_large" else "invalid", exc.message)
    inputs, problem = parse_inputs(model_path, body)
    if inputs is None:
        return _error(422, "invalid", problem)
    sim = simulator_of(request)
    if sim.config.insufficient_credits:
        # RunComfy reports an empty balance as HTTP 400 with code 400002, not as a 402.
        return _error(400, "credits", "InsufficientResources")
    throttled = refuse_past_active_limit(request, _DIALECT)
    if throttled is not None:
        return throttled
    base = base_url_of(request)
    task = sim.submit(
        protocol="runcomfy",
        model=model_path,
        prompt=inputs.prompt,
        seed=inputs.seed,
        width=inputs.width,
        height=inputs.height,
        fmt=inputs.fmt,
        base_url=base,
    )
    return JSONResponse({"request_id": task.id, **request_urls(base, task.id)})


async def status(request: Request) -> Response:
    """GET /v1/requests/{id}/status: the state, with queue_position while in_queue."""
    task = polled_task(request, _DIALECT, lambda sim: sim.find(request.path_params["request_id"], "runcomfy"),
                       _not_found)
    if isinstance(task, Response):
        return task
    sim = simulator_of(request)
    now = sim.clock()
    payload: dict[str, Any] = {"request_id": task.id, "status": task.status(now)}
    if task.phase(now) is Phase.QUEUED:
        payload["queue_position"] = sum(
            1
            for other in sim.tasks.values()
            if other.protocol == "runcomfy"
            and other.created_at < task.created_at
            and other.phase(now) is Phase.QUEUED
        )
    urls = request_urls(base_url_of(request), task.id)
    payload.update(status_url=urls["status_url"], result_url=urls["result_url"])
    return JSONResponse(payload)


async def result(request: Request) -> Response:
    """GET /v1/requests/{id}/result: output, error, or the current status to keep polling."""
    task = polled_task(request, _DIALECT, lambda sim: sim.find(request.path_params["request_id"], "runcomfy"),
                       _not_found)
    if isinstance(task, Response):
        return task
    sim = simulator_of(request)
    now = sim.clock()
    if task.phase(now) is Phase.SUCCEEDED:
        await sim.ensure_rendered(task)
    return JSONResponse(result_payload(task, now, base_url_of(request), sim.config))


async def cancel(request: Request) -> Response:
    """POST /v1/requests/{id}/cancel: only a queued request can be cancelled."""
    sim = simulator_of(request)
    refused = sim.check_key(bearer_token(request))
    if refused is not None:
        return _error(refused, "unauthenticated" if refused == 401 else "forbidden", "")
    task = sim.find(request.path_params["request_id"], "runcomfy")
    if task is None:
        return _not_found()
    now = sim.clock()
    phase = task.phase(now)
    if phase is Phase.QUEUED:
        task.cancelled_at = now
    elif phase is not Phase.CANCELLED:
        # "Running jobs cannot be cancelled" (model page); the status code is a guess.
        return _error(409, "conflict", f"request is {task.status(now)}, not in_queue")
    # Cancelling twice answers like the first time, so a retried cancel is not an error.
    return JSONResponse({"request_id": task.id, "status": "cancelled"})


def routes() -> list[Route]:
    """RunComfy's routes, auth by Authorization: Bearer."""
    return [
        Route("/v1/models/{model_path:path}", submit, methods=["POST"]),
        Route("/v1/requests/{request_id}/status", status, methods=["GET"]),
        Route("/v1/requests/{request_id}/result", result, methods=["GET"]),
        Route("/v1/requests/{request_id}/cancel", cancel, methods=["POST"]),
    ]
