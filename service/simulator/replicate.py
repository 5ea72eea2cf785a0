"""Replicate: POST /v1/models/{owner}/{name}/predictions, GET and cancel a prediction, and
callbacks signed per Standard Webhooks with the account's secret (GET /v1/webhooks/default/secret).

Source: providers.md section e1 (replicate.com/docs: predictions, webhooks, rate limits) and the
models' API pages. Error bodies are RFC 7807 problem objects (`title`, `detail`, `status`), as
Replicate's API answers; the 429's `detail` is the documented sentence.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.simulator.callbacks import Callback, standard_webhook_signature
from service.simulator.config import SimulatorConfig
from service.simulator.images import size_for_aspect_ratio
from service.simulator.simulator import Simulator
from service.simulator.state import FAILURES, Phase, Task, Webhook, rfc3339
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

OUTPUT_FORMATS = ("webp", "jpg", "png")
WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
DEFAULT_EVENTS = ("output", "completed")  # "new outputs or the prediction has finished"
# [dev] and [schnell] answer a list of URLs (num_outputs); the others one URL.
LIST_OUTPUT_MODELS = ("flux-dev", "flux-schnell")
STALE_BY_S = 360  # a stale callback is stamped 6 minutes in the past: past the 5-minute window

_TITLES = {
    "unauthenticated": "Unauthenticated",
    "forbidden": "Forbidden",
    "not_found": "Not found",
    "credits": "Insufficient credit",
    "invalid": "Input validation failed",
    "rate_limited": "Request was throttled",
    "unavailable": "Service unavailable",
    "too_large": "Request too large",
    "conflict": "Conflict",
}


@dataclass(frozen=True)
class PredictionRequest:
    """The fields of a prediction request the simulator acts on."""

    prompt: str
    seed: int | None
    width: int
    height: int
    fmt: str
    webhook_url: str | None
    events: tuple[str, ...]


def parse_request(body: Mapping[str, Any]) -> tuple[PredictionRequest | None, str]:
    """Validate `{"input": {...}, "webhook", "webhook_events_filter"}`; (request, "") or (None, why)."""
    given = body.get("input")
    if not isinstance(given, dict):
        return None, "input: input is required and must be an object"
    prompt = given.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return None, "input.prompt: prompt is required"
    seed = given.get("seed")
    if seed is not None and not is_int(seed):
        return None, "input.seed: Invalid type. Expected: integer"
    fmt = given.get("output_format", "webp")
    if fmt not in OUTPUT_FORMATS:
        return None, "input.output_format: must be one of webp, jpg, png"
    for name in ("input_image", "image_prompt"):
        if given.get(name) is not None and not is_http_url(given[name]):
            return None, f"input.{name}: must be a URI"
    images = given.get("input_images", [])
    if not (isinstance(images, list) and all(is_http_url(i) for i in images)):
        return None, "input.input_images: must be a list of URIs"
    ratio = given.get("aspect_ratio", "1:1")
    if ratio == "custom":
        width, height = given.get("width", 1024), given.get("height", 1024)
        if not (is_int(width) and is_int(height) and 256 <= width <= 2048 and 256 <= height <= 2048):
            return None, "input.width, input.height: integers from 256 to 2048 with aspect_ratio custom"
    elif ratio == "match_input_image":
        width, height = size_for_aspect_ratio("1:1")
    else:
        try:
            width, height = size_for_aspect_ratio(ratio) if isinstance(ratio, str) else (0, 0)
        except ValueError:
            width = 0
        if not width:
            return None, "input.aspect_ratio: must be W:H, custom or match_input_image"
    url = body.get("webhook")
    if url is not None and not is_http_url(url):
        return None, "webhook: must be an http(s) URL"
    events = body.get("webhook_events_filter", list(DEFAULT_EVENTS))
    if not (isinstance(events, list) and all(e in WEBHOOK_EVENTS for e in events)):
        return None, "webhook_events_filter: each must be one of start, output, logs, completed"
    return PredictionRequest(prompt, seed, width, height, fmt, url, tuple(events)), ""


def image_url(base_url: str, task: Task) -> str:
    """Where the prediction's picture is served (replicate.delivery's stand-in)."""
    return f"{base_url}/delivery/{task.id}/sample.{task.fmt}"


def failure_text(phase: Phase) -> str:
    if phase is Phase.FAILED:
        return "Prediction failed: CUDA error: an illegal memory access was encountered"
    return "The input or output was flagged as sensitive. Please try again with different inputs. (E005)"


def prediction(task: Task, now: float, base_url: str) -> dict[str, Any]:
    """The prediction object: what GET, POST and every callback carry."""
    phase = task.phase(now)
    root = f"{base_url}/v1/predictions/{task.id}"
    output: Any = None
    if phase is Phase.SUCCEEDED:
        url = image_url(base_url, task)
        output = [url] if task.model.split("/")[-1] in LIST_OUTPUT_MODELS else url
    started = min(now, task.cancelled_at or now) >= task.queued_until
    finished = phase not in (Phase.QUEUED, Phase.RUNNING)
    percent = task.running_percent(now)
    return {
        "id": task.id,
        "model": task.model,
        "version": "hidden",
        "input": {"prompt": task.prompt, "seed": task.seed},
        "logs": f"Using seed: {task.seed}\n{percent:3d}%|" if started else "",
        "output": output,
        "data_removed": False,
        "error": failure_text(phase) if phase in FAILURES else None,
        "status": task.status(now),
        "created_at": rfc3339(task.created_at),
        "started_at": rfc3339(task.queued_until) if started else None,
        "completed_at": rfc3339(task.cancelled_at or task.done_at) if finished else None,
        "urls": {"get": root, "cancel": f"{root}/cancel", "stream": f"{base_url}/stream/{task.id}",
                 "web": f"{base_url}/p/{task.id}"},
        "metrics": {"predict_time": round(task.done_at - task.queued_until, 3)} if finished else {},
    }


class ReplicateCallbacks:
    """Replicate's webhooks: the prediction object, signed with the account's current secret."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def progress_points(self, task: Task) -> Sequence[float]:
        """`start` once the prediction runs, when subscribed (Flux has no partial outputs)."""
        return (0.0,) if task.webhook is not None and "start" in task.webhook.events else ()

    def build(self, task: Task, event: str, *, now: float, config: SimulatorConfig) -> Callback | None:
        if task.webhook is None:
            return None
        name = "start" if event == "progress" else "completed"
        if name not in task.webhook.events:
            return None
        body = json.dumps(prediction(task, now, task.base_url), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if not task.fate.unsigned_callback and task.webhook.api_key:
            # One id per event, the same on every retry (Standard Webhooks); the timestamp is
            # this send's, or 6 minutes old for a stale callback.
            msg_id = f"msg_{task.id.replace('-', '')}_{name}"
            stamp = int(now) - (STALE_BY_S if task.fate.stale_callback else 0)
            secret = self.sim.signing_secret(task.webhook.api_key)
            headers.update({
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": standard_webhook_signature(secret, msg_id, stamp, body),
            })
        return Callback(event=name, body=body, headers=headers)


def _error(status: int, reason: str, message: str) -> Response:
    if reason == "rate_limited":
        message = "Request was throttled. Your rate limit resets in ~30s."  # §e1.5
    title = _TITLES.get(reason, reason)
    return JSONResponse({"title": title, "detail": message or title, "status": status},
                        status_code=status, media_type="application/problem+json")


_DIALECT = Dialect(protocol="replicate", read_key=bearer_token, error=_error)


async def create_prediction(request: Request) -> Response:
    """POST /v1/models/{owner}/{name}/predictions: 201 with the prediction (status starting)."""
    refused = admit(request, _DIALECT, "submit")
    if refused is not None:
        return refused
    owner, name = request.path_params["owner"], request.path_params["name"]
    if owner != "black-forest-labs" or not name.startswith("flux"):
        return _error(404, "not_found", f"The requested model {owner}/{name} was not found.")
    try:
        body = await read_json_object(request)
    except BodyError as exc:
        return _error(413 if exc.reason == "too_large" else 400,
                      "too_large" if exc.reason == "too_large" else "invalid", exc.message)
    parsed, problem = parse_request(body)
    if parsed is None:
        return _error(422, "invalid", f"- {problem}")
    sim = simulator_of(request)
    if sim.config.insufficient_credits:
        return _error(402, "credits", "You have insufficient credit to run this model.")
    throttled = refuse_past_active_limit(request, _DIALECT)
    if throttled is not None:
        return throttled
    webhook = None
    if parsed.webhook_url:
        webhook = Webhook(url=parsed.webhook_url, api_key=bearer_token(request), events=parsed.events)
    base = base_url_of(request)
    task = sim.submit(
        protocol="replicate", model=f"{owner}/{name}", prompt=parsed.prompt, seed=parsed.seed,
        width=parsed.width, height=parsed.height, fmt=parsed.fmt, base_url=base, webhook=webhook,
        callback_format=ReplicateCallbacks(sim),
    )
    return JSONResponse(prediction(task, sim.clock(), base), status_code=201)


async def get_prediction(request: Request) -> Response:
    """GET /v1/predictions/{id}."""
    task = polled_task(request, _DIALECT,
                       lambda sim: sim.find(request.path_params["prediction_id"], "replicate"),
                       lambda: _error(404, "not_found", "The requested resource could not be found."))
    if isinstance(task, Response):
        return task
    sim = simulator_of(request)
    now = sim.clock()
    if task.phase(now) is Phase.SUCCEEDED:
        await sim.ensure_rendered(task)
    return JSONResponse(prediction(task, now, base_url_of(request)))


async def cancel_prediction(request: Request) -> Response:
    """POST /v1/predictions/{id}/cancel: cancels a starting or processing prediction; a finished
    one is answered as it is."""
    sim = simulator_of(request)
    refused = sim.check_key(bearer_token(request))
    if refused is not None:
        return _error(refused, "unauthenticated" if refused == 401 else "forbidden", "")
    task = sim.find(request.path_params["prediction_id"], "replicate")
    if task is None:
        return _error(404, "not_found", "The requested resource could not be found.")
    now = sim.clock()
    if task.phase(now) in (Phase.QUEUED, Phase.RUNNING):
        task.cancelled_at = now
    return JSONResponse(prediction(task, now, base_url_of(request)))


async def webhook_secret(request: Request) -> Response:
    """GET /v1/webhooks/default/secret: {"key": "whsec_..."}, one per account (API key)."""
    sim = simulator_of(request)
    key = bearer_token(request)
    refused = sim.check_key(key)
    if refused is not None or key is None:
        return _error(refused or 401, "unauthenticated" if refused != 403 else "forbidden", "")
    return JSONResponse({"key": sim.signing_secret(key)})


async def rotate_secret(request: Request) -> Response:
    """POST /_sim/replicate/rotate-secret (the simulator's own, for tests): the account of the
    Bearer key gets a new signing secret; the old one signs nothing from now on."""
    sim = simulator_of(request)
    key = bearer_token(request)
    if key is None:
        return _error(401, "unauthenticated", "")
    sim.rotate_signing_secret(key)
    return JSONResponse({"rotated": True})


def routes() -> list[Route]:
    """Replicate's routes, auth by Authorization: Bearer. They go before RunComfy's, whose
    `/v1/models/{path}` would also match a prediction request."""
    return [
        Route("/v1/models/{owner}/{name}/predictions", create_prediction, methods=["POST"]),
        Route("/v1/predictions/{prediction_id}", get_prediction, methods=["GET"]),
        Route("/v1/predictions/{prediction_id}/cancel", cancel_prediction, methods=["POST"]),
        Route("/v1/webhooks/default/secret", webhook_secret, methods=["GET"]),
        Route("/_sim/replicate/rotate-secret", rotate_secret, methods=["POST"]),
    ]
