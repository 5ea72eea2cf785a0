"""Black Forest Labs' async API: POST /v1/{model}, GET /v1/get_result, signed callbacks.

Shapes follow the BFL OpenAPI (each model's inputs in bfl_inputs.py, AsyncResponse,
AsyncWebhookResponse, ResultResponse, HTTPValidationError); the callback body and
X-BFL-Signature follow BFL's own skill docs (providers.md section a.3), the only first-party
description of them.
CometAPI, a BFL proxy, reuses everything here with its own paths, auth and error envelope.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.simulator.bfl_inputs import parse_inputs
from service.simulator.callbacks import Callback, bfl_signature
from service.simulator.config import SimulatorConfig
from service.simulator.state import Phase, Task, Webhook, rfc3339
from service.simulator.wire import (
    BodyError,
    Dialect,
    admit,
    base_url_of,
    json_response,
    read_json_object,
    refuse_past_active_limit,
    simulator_of,
)

MODEL_NAME = re.compile(r"^flux-[A-Za-z0-9.\-]+$")
COST_CREDITS = 4.0

# Failure callbacks carry a machine word and a sentence, as in BFL's skill example.
_FAILURE_TEXT = {
    Phase.FAILED: ("internal_error", "Generation failed due to an internal error"),
    Phase.REQUEST_MODERATED: ("content_policy_violation", "The request was flagged by moderation"),
    Phase.CONTENT_MODERATED: ("content_policy_violation", "The output was flagged by moderation"),
}


@dataclass(frozen=True)
class Flavour:
    """BFL or a BFL proxy: the path prefix, key and error dialect, and the validation answer."""

    dialect: Dialect
    prefix: str
    validation_error: Callable[[list[dict[str, Any]]], Response]


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
        inputs, errors = parse_inputs(model, body)
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
            edit=inputs.edit,
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
