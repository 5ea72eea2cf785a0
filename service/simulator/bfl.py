"""Black Forest Labs' async API: POST /v1/{model}, GET /v1/get_result, signed callbacks.

Shapes follow the BFL OpenAPI (FluxPro11Inputs, AsyncResponse, AsyncWebhookResponse,
ResultResponse, HTTPValidationError); the callback body and X-BFL-Signature follow BFL's own
skill docs (providers.md section a.3), the only first-party description of them.
CometAPI, a BFL proxy, reuses everything here with its own paths, auth and error envelope.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.simulator.callbacks import Callback, bfl_signature
from service.simulator.config import SimulatorConfig
from service.simulator.images import aspect_ratio_within, size_for_aspect_ratio
from service.simulator.state import Phase, Task, Webhook, rfc3339
from service.simulator.wire import (
    BodyError,
    Dialect,
    admit,
    base_url_of,
    is_http_url,
    is_int,
    json_response,
    read_json_object,
    refuse_past_active_limit,
    simulator_of,
)

MODEL_NAME = re.compile(r"^flux-[A-Za-z0-9.\-]+$")
OUTPUT_FORMATS = ("jpeg", "png", "webp")
DEFAULT_SIZE = (1024, 768)  # FluxPro11Inputs defaults
COST_CREDITS = 4.0

# Failure callbacks carry a machine word and a sentence, as in BFL's skill example.
_FAILURE_TEXT = {
    Phase.FAILED: ("internal_error", "Generation failed due to an internal error"),
    Phase.REQUEST_MODERATED: ("content_policy_violation", "The request was flagged by moderation"),
    Phase.CONTENT_MODERATED: ("content_policy_violation", "The output was flagged by moderation"),
}


@dataclass(frozen=True)
class BflInputs:
    """The submit fields the simulator acts on; everything else is accepted and ignored."""

    prompt: str
    width: int
    height: int
    seed: int | None
    output_format: str
    webhook_url: str | None
    webhook_secret: str | None


@dataclass(frozen=True)
class Flavour:
    """BFL or a BFL proxy: the path prefix, key and error dialect, and the validation answer."""

    dialect: Dialect
    prefix: str
    validation_error: Callable[[list[dict[str, Any]]], Response]


def parse_inputs(body: Mapping[str, Any]) -> tuple[BflInputs | None, list[dict[str, Any]]]:
    """Validate a submit body like BFL's FastAPI does; return (inputs, []) or (None, errors)."""
    errors: list[dict[str, Any]] = []

    def fail(name: str, kind: str, msg: str) -> None:
        errors.append({"type": kind, "loc": ["body", name], "msg": msg, "input": body.get(name)})

    prompt = body.get("prompt")
    if prompt is None:
        fail("prompt", "missing", "Field required")
    elif not isinstance(prompt, str):
        fail("prompt", "string_type", "Input should be a valid string")
    size: dict[str, int] = {}
    for name in ("width", "height"):
        value = body.get(name)
        if value is None:
            continue
        if not is_int(value):
            fail(name, "int_type", "Input should be a valid integer")
        elif value % 32:
            fail(name, "multiple_of", "Input should be a multiple of 32")
        elif value < 256:
            fail(name, "greater_than_equal", "Input should be greater than or equal to 256")
        elif value > 1440:
            fail(name, "less_than_equal", "Input should be less than or equal to 1440")
        else:
            size[name] = value
    seed = body.get("seed")
    if seed is not None and not is_int(seed):
        fail("seed", "int_type", "Input should be a valid integer")
    fmt = body.get("output_format") or "jpeg"
    if fmt not in OUTPUT_FORMATS:
        fail("output_format", "enum", "Input should be 'jpeg', 'png' or 'webp'")
    tolerance = body.get("safety_tolerance")
    if tolerance is not None and not (is_int(tolerance) and 0 <= tolerance <= 6):
        fail("safety_tolerance", "less_than_equal", "Input should be an integer from 0 to 6")
    if body.get("prompt_upsampling") is not None and not isinstance(body["prompt_upsampling"], bool):
        fail("prompt_upsampling", "bool_type", "Input should be a valid boolean")
    ratio = body.get("aspect_ratio")
    if ratio is not None and not (isinstance(ratio, str) and aspect_ratio_within(ratio)):
        fail("aspect_ratio", "value_error", "Value error, aspect ratio must be 'W:H' between 21:9 and 9:21")
    for name in ("input_image", "image_prompt", "webhook_secret"):
        if body.get(name) is not None and not isinstance(body[name], str):
            fail(name, "string_type", "Input should be a valid string")
    url = body.get("webhook_url")
    if url is not None and not (is_http_url(url) and len(url) <= 2083):
        fail("webhook_url", "url_parsing", "Input should be a valid URL")
    if errors:
        return None, errors
    if size or not ratio:
        width, height = size.get("width", DEFAULT_SIZE[0]), size.get("height", DEFAULT_SIZE[1])
    else:
        width, height = size_for_aspect_ratio(ratio)  # Kontext: aspect_ratio instead of size
    assert isinstance(prompt, str)  # checked above: a missing prompt is a 422
    return BflInputs(
        prompt=prompt,
        width=width,
        height=height,
        seed=seed,
        output_format=fmt,
        webhook_url=url,
        webhook_secret=body.get("webhook_secret"),
    ), []


def image_url(base_url: str, task: Task) -> str:
    """Where the task's picture is served; BFL's delivery URLs end in sample.<format>."""
    return f"{base_url}/delivery/{task.id}/sample.{task.fmt}"


def ready_result(task: Task, base_url: str) -> dict[str, Any]:
    """The `result` object of a Ready task, shared by polls and callbacks."""
    return {
        "sample": image_url(base_url, task),
        "prompt": task.prompt,
        "seed": task.seed,
        "start_time": task.created_at,
        "end_time": task.done_at,
        "duration": round(task.fate.latency_s, 3),
    }


def poll_payload(task: Task, now: float, base_url: str) -> dict[str, Any]:
    """A ResultResponse for a known task at time `now`."""
    phase = task.phase(now)
    progress: float | None = None
    if phase in (Phase.QUEUED, Phase.RUNNING):
        progress = task.running_percent(now) / 100  # UNCONFIRMED scale: BFL only says "number"
    elif phase is Phase.SUCCEEDED:
        progress = 1.0
    return {
        "id": task.id,
        "status": task.status(now),
        "result": ready_result(task, base_url) if phase is Phase.SUCCEEDED else None,
        "progress": progress,
        "details": None,
        "preview": None,
    }


class BflCallbacks:
    """BFL's callback: one terminal POST, signed when the submit carried a webhook_secret."""

    def progress_points(self, task: Task) -> Sequence[float]:
        """BFL sends no progress callbacks."""
        return ()

    def build(self, task: Task, event: str, *, now: float, config: SimulatorConfig) -> Callback | None:
        """The terminal callback body and headers; None for progress."""
        if event != "terminal" or task.webhook is None:
            return None
        phase = task.fate.outcome
        payload: dict[str, Any] = {"id": task.id, "status": task.status(task.done_at)}
        if phase is Phase.SUCCEEDED:
            payload["result"] = ready_result(task, task.base_url)
        else:
            payload["error"], payload["message"] = _FAILURE_TEXT[phase]
        payload["timestamp"] = rfc3339(now)
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if task.webhook.secret and not task.fate.unsigned_callback:
            headers["X-BFL-Signature"] = bfl_signature(task.webhook.secret, body)
        return Callback(event=payload["status"], body=body, headers=headers)


def provider_routes(flavour: Flavour) -> list[Route]:
    """Submit and get_result routes for BFL or a proxy speaking BFL's protocol."""
    dialect = flavour.dialect

    async def submit(request: Request) -> Response:
        model = request.path_params["model"]
        if not MODEL_NAME.match(model):
            return dialect.error(404, "not_found", "Not Found")
        refused = admit(request, dialect, "submit")
        if refused is not None:
            return refused
        try:
            body = await read_json_object(request)
        except BodyError as exc:
            if exc.reason == "too_large":
                return dialect.error(413, "too_large", exc.message)
            kind = "json_invalid" if exc.reason == "invalid_json" else "model_attributes_type"
            return flavour.validation_error([{"type": kind, "loc": ["body"], "msg": exc.message}])
        inputs, errors = parse_inputs(body)
        if inputs is None:
            return flavour.validation_error(errors)
        sim = simulator_of(request)
        if sim.config.insufficient_credits:
            return dialect.error(402, "credits", "Insufficient credits")
        throttled = refuse_past_active_limit(request, dialect)
        if throttled is not None:
            return throttled
        base = base_url_of(request)
        webhook = None
        if inputs.webhook_url:
            webhook = Webhook(url=inputs.webhook_url, secret=inputs.webhook_secret)
        task = sim.submit(
            protocol=dialect.protocol,
            model=model,
            prompt=inputs.prompt,
            seed=inputs.seed,
            width=inputs.width,
            height=inputs.height,
            fmt=inputs.output_format,
            base_url=base,
            webhook=webhook,
            callback_format=BflCallbacks(),
            cost=COST_CREDITS,
        )
        if webhook is not None and not sim.config.include_polling_url_with_webhook:
            # OpenAPI AsyncWebhookResponse: no polling_url, so clients must know the fallback.
            return json_response(
                {"id": task.id, "status": "Pending", "webhook_url": webhook.url, "cost": task.cost}
            )
        return json_response(
            {
                "id": task.id,
                "polling_url": f"{base}{flavour.prefix}/get_result?id={task.id}",
                "cost": task.cost,
            }
        )

    async def get_result(request: Request) -> Response:
        refused = admit(request, dialect, "poll")
        if refused is not None:
            return refused
        task_id = request.query_params.get("id")
        if not task_id:
            return flavour.validation_error(
                [{"type": "missing", "loc": ["query", "id"], "msg": "Field required"}]
            )
        sim = simulator_of(request)
        task = sim.find(task_id, dialect.protocol)
        if task is None:
            # BFL answers 200, not 404: unknown and expired ids look the same.
            return json_response(
                {
                    "id": task_id,
                    "status": "Task not found",
                    "result": None,
                    "progress": None,
                    "details": None,
                    "preview": None,
                }
            )
        task.poll_count += 1
        now = sim.clock()
        if task.phase(now) is Phase.SUCCEEDED:
            await sim.ensure_rendered(task)  # so a Ready answer's image is downloadable at once
        return json_response(poll_payload(task, now, base_url_of(request)))

    return [
        Route(f"{flavour.prefix}/get_result", get_result, methods=["GET"]),
        Route(f"{flavour.prefix}/{{model}}", submit, methods=["POST"]),
    ]


def _error(status: int, reason: str, message: str) -> Response:
    return JSONResponse({"detail": message}, status_code=status)


def _validation_error(errors: list[dict[str, Any]]) -> Response:
    return JSONResponse({"detail": errors}, status_code=422)


def routes() -> list[Route]:
    """BFL's routes: POST /v1/{model} and GET /v1/get_result, auth by the x-key header."""
    dialect = Dialect(protocol="bfl", read_key=lambda r: r.headers.get("x-key"), error=_error)
    return provider_routes(Flavour(dialect=dialect, prefix="/v1", validation_error=_validation_error))
