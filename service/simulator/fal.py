"""fal.ai's queue under /fal: submit with `fal_webhook`, status, result, cancel, and callbacks
signed with ED25519 under a key whose JWKS is served at /fal/.well-known/jwks.json.

Source: providers.md section e2 (docs.fal.ai queue, webhooks, cancel, errors). The queue URLs
use the model id without its subpath (`fal-ai/flux-pro`, not `fal-ai/flux-pro/v1.1`); asking
with the subpath is a 404 here, so a client that gets it wrong finds out. Undocumented details
(the result of an unfinished request, a cancelled request's result) are marked UNCONFIRMED.

The signing key is a pure function of `fal_key_generation` (and the seed): PATCHing that knob
rotates it, and the JWKS then holds only the new key, as after a real rotation.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.simulator.callbacks import Callback
from service.simulator.config import SimulatorConfig
from service.simulator.images import size_for_aspect_ratio
from service.simulator.simulator import Simulator
from service.simulator.state import FAILURES, Phase, Task, Webhook
from service.simulator.wire import (
    BodyError,
    Dialect,
    admit,
    base_url_of,
    is_http_url,
    is_int,
    polled_task,
    read_json_object,
    refuse_past_active_limit,
    simulator_of,
)

PREFIX = "/fal"
USER_ID = "simulator-user"
STALE_BY_S = 360  # a stale callback's timestamp is 6 minutes old: past fal's ±5 minutes
IMAGE_SIZES = {
    "square_hd": "1:1", "square": "1:1", "portrait_4_3": "3:4", "portrait_16_9": "9:16",
    "landscape_4_3": "4:3", "landscape_16_9": "16:9",
}
ASPECT_RATIOS = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")
OUTPUT_FORMATS = ("jpeg", "png")
SAFETY_TOLERANCES = ("1", "2", "3", "4", "5", "6")


def signing_key(config: SimulatorConfig) -> Ed25519PrivateKey:
    """The simulator's fal signing key for the current `fal_key_generation`."""
    seed = hashlib.sha256(f"fluxhook-sim-fal:{config.seed}:{config.fal_key_generation}".encode())
    return Ed25519PrivateKey.from_private_bytes(seed.digest())


def jwks(config: SimulatorConfig) -> dict[str, Any]:
    """The JWKS fal would publish: one OKP/Ed25519 key, `x` in unpadded base64url."""
    public = signing_key(config).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(public).rstrip(b"=").decode()
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "use": "sig",
                      "kid": f"sim-{config.fal_key_generation}"}]}


def sign(config: SimulatorConfig, request_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """fal's four webhook headers for `body`: the signature is Ed25519 over request id, user id,
    timestamp and the body's hex SHA-256, joined by newlines, in hex."""
    message = "\n".join((request_id, USER_ID, str(timestamp), hashlib.sha256(body).hexdigest()))
    signature = signing_key(config).sign(message.encode()).hex()
    return {"X-Fal-Webhook-Request-Id": request_id, "X-Fal-Webhook-User-Id": USER_ID,
            "X-Fal-Webhook-Timestamp": str(timestamp), "X-Fal-Webhook-Signature": signature}


@dataclass(frozen=True)
class FalInputs:
    prompt: str
    seed: int | None
    width: int
    height: int
    fmt: str


def parse_inputs(model: str, body: Mapping[str, Any]) -> tuple[FalInputs | None, list[dict[str, Any]]]:
    """Validate a submit body like fal's FastAPI apps do: (inputs, []) or (None, detail list)."""
    errors: list[dict[str, Any]] = []

    def fail(name: str, msg: str, kind: str = "value_error") -> None:
        errors.append({"loc": ["body", name], "msg": msg, "type": kind})

    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        fail("prompt", "field required", "missing")
    if "kontext" in model and not is_http_url(body.get("image_url")):
        fail("image_url", "field required: a URL of the image to edit", "missing")
    seed = body.get("seed")
    if seed is not None and not is_int(seed):
        fail("seed", "value is not a valid integer")
    fmt = body.get("output_format", "jpeg")
    if fmt not in OUTPUT_FORMATS:
        fail("output_format", "must be jpeg or png")
    tolerance = body.get("safety_tolerance")
    if tolerance is not None and tolerance not in SAFETY_TOLERANCES:
        fail("safety_tolerance", 'must be one of "1" to "6" (a string)')
    ratio = body.get("aspect_ratio")
    if ratio is not None and ratio not in ASPECT_RATIOS:
        fail("aspect_ratio", f"must be one of {', '.join(ASPECT_RATIOS)}")
    size = body.get("image_size", "landscape_4_3")
    width = height = 0
    if isinstance(size, str) and size in IMAGE_SIZES:
        width, height = size_for_aspect_ratio(IMAGE_SIZES[size])
    elif isinstance(size, dict) and all(is_int(size.get(k)) and 64 <= size[k] <= 2048
                                        for k in ("width", "height")):
        width, height = size["width"], size["height"]
    else:
        fail("image_size", "a preset name or {width, height} from 64 to 2048")
    if ratio is not None and not errors:
        width, height = size_for_aspect_ratio(ratio)
    if errors:
        return None, errors
    assert isinstance(prompt, str) and isinstance(fmt, str)
    return FalInputs(prompt, seed, width, height, fmt), []


def model_id(path: str) -> str:
    """The model id of a submit path: its first two segments (`fal-ai/flux-pro/v1.1` ->
    `fal-ai/flux-pro`), the part status, result and cancel URLs use."""
    return "/".join(path.strip("/").split("/")[:2])


def request_urls(base: str, model: str, request_id: str) -> dict[str, str]:
    root = f"{base}{PREFIX}/{model_id(model)}/requests/{request_id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}


def image_url(base: str, task: Task) -> str:
    """The picture's URL (fal's v3.fal.media stand-in)."""
    return f"{base}/cdn/{task.id}/0.{task.fmt}"


def result_payload(task: Task, base: str) -> dict[str, Any]:
    """A succeeded request's result, as fal's Flux apps answer it."""
    return {
        "images": [{"url": image_url(base, task), "width": task.width, "height": task.height,
                    "content_type": task.content_type or f"image/{task.fmt}"}],
        "seed": task.seed,
        "has_nsfw_concepts": [False],
        "prompt": task.prompt,
        "timings": {"inference": round(task.fate.latency_s, 3)},
    }


def failure(task: Task) -> tuple[int, dict[str, Any]]:
    """A failed request's result answer: a model error (422, typed `detail`) for moderation, a
    request error (`error_type`) otherwise (docs model-apis/errors and request-errors)."""
    if task.fate.outcome in (Phase.REQUEST_MODERATED, Phase.CONTENT_MODERATED):
        return 422, {"detail": [{"loc": ["body", "prompt"], "type": "content_policy_violation",
                                 "msg": "The content was flagged by a content checker."}]}
    return 500, {"detail": "Generation failed on the runner", "error_type": "runner_server_error"}


class FalCallbacks:
    """One request's webhook: a terminal POST, signed (or unsigned, or stamped 6 minutes old,
    by its drawn fate). A replay to another request's URL is the simulator's, as for Replicate."""

    def progress_points(self, task: Task) -> Sequence[float]:
        return ()  # fal calls back once, when the request is done

    def build(self, task: Task, event: str, *, now: float, config: SimulatorConfig) -> Callback | None:
        if event != "terminal":
            return None
        payload: dict[str, Any] = {"request_id": task.id, "gateway_request_id": task.id}
        if task.fate.outcome is Phase.SUCCEEDED:
            payload.update(status="OK", payload=result_payload(task, task.base_url))
        else:
            status, detail = failure(task)
            payload.update(status="ERROR", error=f"Invalid status code: {status}", payload=detail)
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if not task.fate.unsigned_callback:
            timestamp = int(now) - (STALE_BY_S if task.fate.stale_callback else 0)
            headers.update(sign(config, task.id, timestamp, body))
        return Callback(event="terminal", body=body, headers=headers)


def _error(status: int, reason: str, message: str) -> Response:
    return JSONResponse({"detail": message or reason}, status_code=status)


def _read_key(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "key" else None


_DIALECT = Dialect(protocol="fal", read_key=_read_key, error=_error)


def _find(request: Request, sim: Simulator) -> Task | None:
    """The request the URL names, if its model id (without subpath) is the submitted one's."""
    task = sim.find(request.path_params["request_id"], "fal")
    named = f"{request.path_params['owner']}/{request.path_params['app']}"
    return task if task is not None and model_id(task.model) == named else None


async def submit(request: Request) -> Response:
    """POST /fal/{model_id}[/{subpath}]?fal_webhook=<url>: the request id and its three URLs."""
    refused = admit(request, _DIALECT, "submit")
    if refused is not None:
        return refused
    model = request.path_params["model_path"].strip("/")
    if model.count("/") < 1:
        return _error(404, "not_found", f"Application {model!r} not found")
    try:
        body = await read_json_object(request)
    except BodyError as exc:
        return _error(413 if exc.reason == "too_large" else 422, exc.reason, exc.message)
    inputs, problems = parse_inputs(model, body)
    if inputs is None:
        return JSONResponse({"detail": problems}, status_code=422)
    webhook_url = request.query_params.get("fal_webhook")
    if webhook_url is not None and not is_http_url(webhook_url):
        return _error(422, "invalid", "fal_webhook must be an http(s) URL")
    sim = simulator_of(request)
    if sim.config.insufficient_credits:
        return _error(403, "credits", "User is locked. Reason: Exhausted balance.")  # UNCONFIRMED
    throttled = refuse_past_active_limit(request, _DIALECT)
    if throttled is not None:
        return throttled
    base = base_url_of(request)
    task = sim.submit(
        protocol="fal", model=model, prompt=inputs.prompt, seed=inputs.seed, width=inputs.width,
        height=inputs.height, fmt=inputs.fmt, base_url=base,
        webhook=Webhook(url=webhook_url) if webhook_url else None, callback_format=FalCallbacks(),
    )
    return JSONResponse({"request_id": task.id, "gateway_request_id": task.id,
                         **request_urls(base, model, task.id), "queue_position": 0})


async def status(request: Request) -> Response:
    """GET .../requests/{id}/status: IN_QUEUE (with queue_position), IN_PROGRESS or COMPLETED."""
    task = polled_task(request, _DIALECT, lambda sim: _find(request, sim),
                       lambda: _error(404, "not_found", "Request not found"))
    if isinstance(task, Response):
        return task
    sim = simulator_of(request)
    now = sim.clock()
    urls = request_urls(base_url_of(request), task.model, task.id)
    payload: dict[str, Any] = {"status": task.status(now), "request_id": task.id,
                               "response_url": urls["response_url"]}
    if task.phase(now) is Phase.QUEUED:
        payload["queue_position"] = sum(
            1 for other in sim.tasks.values()
            if other.protocol == "fal" and other.created_at < task.created_at
            and other.phase(now) is Phase.QUEUED)
    return JSONResponse(payload)


async def result(request: Request) -> Response:
    """GET .../requests/{id}: the output once COMPLETED; the request's error if it failed."""
    task = polled_task(request, _DIALECT, lambda sim: _find(request, sim),
                       lambda: _error(404, "not_found", "Request not found"))
    if isinstance(task, Response):
        return task
    sim = simulator_of(request)
    phase = task.phase(sim.clock())
    if phase is Phase.SUCCEEDED:
        await sim.ensure_rendered(task)
        return JSONResponse(result_payload(task, base_url_of(request)))
    if phase in FAILURES:
        status_code, detail = failure(task)
        headers = {"X-Fal-Error-Type": detail["error_type"]} if "error_type" in detail else None
        return JSONResponse(detail, status_code=status_code, headers=headers)
    if phase is Phase.CANCELLED:  # UNCONFIRMED: how fal answers a cancelled request's result
        return JSONResponse({"detail": "Request was cancelled", "error_type": "request_cancelled"},
                            status_code=400)
    return _error(400, "in_progress", "Request is still in progress")  # UNCONFIRMED wording


async def cancel(request: Request) -> Response:
    """PUT .../requests/{id}/cancel: OK while queued (removed), CANCELLATION_REQUESTED while
    running (the runner is told to stop; here it does), ALREADY_COMPLETED, NOT_FOUND."""
    sim = simulator_of(request)
    refused = sim.check_key(_read_key(request))
    if refused is not None:
        return _error(refused, "unauthenticated", "Unauthorized")
    task = _find(request, sim)
    if task is None:
        return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
    now = sim.clock()
    phase = task.phase(now)
    if phase is Phase.QUEUED or phase is Phase.CANCELLED:
        task.cancelled_at = task.cancelled_at or now
        return JSONResponse({"status": "OK"})
    if phase is Phase.RUNNING:
        task.cancelled_at = now
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
    return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)


async def serve_jwks(request: Request) -> Response:
    """GET /fal/.well-known/jwks.json: the current signing key (no auth: it is public)."""
    return JSONResponse(jwks(simulator_of(request).config))


def routes() -> list[Route]:
    """fal's routes, auth by `Authorization: Key <key>`."""
    request = PREFIX + "/{owner}/{app}/requests/{request_id}"
    return [
        Route(PREFIX + "/.well-known/jwks.json", serve_jwks, methods=["GET"]),
        Route(request + "/status", status, methods=["GET"]),
        Route(request + "/cancel", cancel, methods=["PUT"]),
        Route(request, result, methods=["GET"]),
        Route(PREFIX + "/{model_path:path}", submit, methods=["POST"]),
    ]

