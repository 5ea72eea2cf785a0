"""Apiframe v2: POST /v2/images/generate, GET /v2/jobs/{id}, webhooks signed with the API key.

Source: docs-v2.apiframe.ai (images/flux pages, jobs/get, webhooks) as summarised in
providers.md section c. Undocumented details are guesses, marked UNCONFIRMED.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.simulator.callbacks import Callback, apiframe_signature
from service.simulator.config import SimulatorConfig
from service.simulator.images import aspect_ratio_within, size_for_aspect_ratio
from service.simulator.state import FAILURES, Phase, Task, Webhook, rfc3339
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

OUTPUT_FORMATS = ("jpg", "png", "webp")
WEBHOOK_EVENTS = ("progress", "completed", "failed")
DEFAULT_EVENTS = ("completed", "failed")
CREDIT_COST = 10  # the docs' webhook example shows creditCost 10
# Progress webhooks go out at these fractions of the running time, when subscribed.
PROGRESS_POINTS = (0.45, 0.8)


@dataclass(frozen=True)
class GenerateRequest:
    """The fields of a generate request the simulator acts on."""

    prompt: str
    model: str
    width: int
    height: int
    seed: int | None
    output_format: str
    webhook_url: str | None
    webhook_events: tuple[str, ...]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_request(body: Mapping[str, Any]) -> tuple[GenerateRequest | None, str | None]:
    """Validate a generate body; return (request, None) or (None, the first problem)."""
    prompt, model = body.get("prompt"), body.get("model")
    if not isinstance(prompt, str) or not 1 <= len(prompt) <= 2000:
        return None, "prompt is required and must be 1-2000 characters"
    if not isinstance(model, str) or not model.startswith("flux-"):
        return None, f"unsupported model {model!r}: the simulator serves flux-* models"
    params = body.get("fluxParams") or {}
    if not isinstance(params, dict):
        return None, "fluxParams must be an object"
    size: dict[str, int] = {}
    for name in ("width", "height"):
        value = params.get(name)
        if value is not None and not (is_int(value) and 256 <= value <= 1440):
            return None, f"fluxParams.{name} must be an integer from 256 to 1440"
        if value is not None:
            size[name] = value
    ratio = params.get("aspect_ratio")
    if ratio is not None and not (isinstance(ratio, str) and aspect_ratio_within(ratio)):
        return None, "fluxParams.aspect_ratio must be 'W:H' between 21:9 and 9:21"
    fmt = params.get("output_format") or "jpg"
    if fmt not in OUTPUT_FORMATS:
        return None, "fluxParams.output_format must be one of jpg, png, webp"
    quality = params.get("output_quality")
    if quality is not None and not (_number(quality) and 0 <= quality <= 100):
        return None, "fluxParams.output_quality must be a number from 0 to 100"
    seed = params.get("seed")
    if seed is not None and not is_int(seed):
        return None, "fluxParams.seed must be an integer"
    for name in ("steps", "guidance", "image_prompt_strength"):
        if params.get(name) is not None and not _number(params[name]):
            return None, f"fluxParams.{name} must be a number"
    # The docs' prose also says webhook_url; accept both spellings.
    url = body.get("webhookUrl", body.get("webhook_url"))
    if url is not None and not is_http_url(url):
        return None, "webhookUrl must be an http(s) URL"
    events = body.get("webhookEvents")
    if events is None:
        events = list(DEFAULT_EVENTS)
    if not (isinstance(events, list) and all(e in WEBHOOK_EVENTS for e in events)):
        return None, "webhookEvents must be a list of progress, completed, failed"
    if size:
        width = size.get("width", size.get("height", 1024))
        height = size.get("height", width)
    else:
        width, height = size_for_aspect_ratio(ratio or "1:1")
    return GenerateRequest(
        prompt=prompt,
        model=model,
        width=width,
        height=height,
        seed=seed,
        output_format=fmt,
        webhook_url=url,
        webhook_events=tuple(events),
    ), None


def image_url(base_url: str, task: Task, n: int = 0) -> str:
    """Where picture n of a job is served (Apiframe's cdn.apiframe.ai/... stand-in)."""
    return f"{base_url}/cdn/{task.id}/{n}.{task.fmt}"


def result_value(task: Task, base_url: str, config: SimulatorConfig) -> Any:
    """`result` of a COMPLETED job: a URL string (docs-v2) or {"images": [...]} (older docs)."""
    url = image_url(base_url, task)
    return url if config.apiframe_result_shape == "string" else {"images": [url]}


def failure_text(phase: Phase) -> str:
    """The `error` sentence of a FAILED job."""
    if phase is Phase.FAILED:
        return "Provider returned an error: internal error"
    return "Provider returned an error: content policy violation"


def job_payload(task: Task, now: float, base_url: str, config: SimulatorConfig) -> dict[str, Any]:
    """GET /v2/jobs/{id} for a known job at time `now`."""
    phase = task.phase(now)
    terminal = phase is Phase.SUCCEEDED or phase in FAILURES
    return {
        "id": task.id,
        "status": task.status(now),
        "model": task.model,
        "progress": task.running_percent(now) if phase not in FAILURES else 0,
        "result": result_value(task, base_url, config) if phase is Phase.SUCCEEDED else None,
        "error": failure_text(phase) if phase in FAILURES else None,
        # "On FAILED ... Credits are refunded."
        "creditCost": 0 if phase in FAILURES else task.cost,
        "webhookStatus": "sent" if task.terminal_callback_acknowledged else None,
        "createdAt": rfc3339(task.created_at),
        "completedAt": rfc3339(task.done_at) if terminal else None,
    }


class ApiframeCallbacks:
    """Apiframe's webhooks: only subscribed events, signed with the submitting API key."""

    def progress_points(self, task: Task) -> Sequence[float]:
        """One or two mid-run progress events when "progress" was subscribed."""
        subscribed = task.webhook is not None and "progress" in task.webhook.events
        return PROGRESS_POINTS if subscribed else ()

    def build(self, task: Task, event: str, *, now: float, config: SimulatorConfig) -> Callback | None:
        """The body and headers of a progress, completed or failed webhook, if subscribed."""
        if task.webhook is None:
            return None
        outcome = task.fate.outcome
        payload: dict[str, Any]
        if event == "progress":
            name = "progress"
            payload = {
                "event": name,
                "jobId": task.id,
                "status": "PROCESSING",
                "progress": task.running_percent(now),
                "model": task.model,
            }
        elif outcome is Phase.SUCCEEDED:
            name = "completed"
            payload = {
                "event": name,
                "jobId": task.id,
                "status": "COMPLETED",
                "progress": 100,
                "result": result_value(task, task.base_url, config),
                "model": task.model,
                "creditCost": task.cost,
                "completedAt": rfc3339(task.done_at),
            }
        else:
            name = "failed"
            payload = {
                "event": name,
                "jobId": task.id,
                "status": "FAILED",
                "error": failure_text(outcome),
                "model": task.model,
            }
        if name not in task.webhook.events:
            return None
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "X-Webhook-Event": name}
        if task.webhook.api_key and not task.fate.unsigned_callback:
            headers["X-Webhook-Signature"] = apiframe_signature(
                task.webhook.api_key,
                body,
                key_form=config.apiframe_signature_key,
                encoding=config.apiframe_signature_encoding,
            )
        return Callback(event=name, body=body, headers=headers)


# Apiframe's error body is UNCONFIRMED; its docs quote only the messages.
_CODES = {
    "unauthenticated": "unauthorized",
    "forbidden": "forbidden",
    "rate_limited": "rate_limited",
    "unavailable": "service_unavailable",
    "credits": "insufficient_credits",
    "invalid": "validation_error",
    "not_found": "not_found",
    "conflict": "idempotency_conflict",
    "too_large": "payload_too_large",
}


def _error(status: int, reason: str, message: str) -> Response:
    if reason == "unauthenticated":
        message = "API key is required"  # the docs' wording
    return JSONResponse(
        {"error": {"code": _CODES.get(reason, reason), "message": message}}, status_code=status
    )


_DIALECT = Dialect(protocol="apiframe", read_key=lambda r: r.headers.get("x-api-key"), error=_error)


async def generate(request: Request) -> Response:
    """POST /v2/images/generate: 202 {"jobId","status":"QUEUED"}, honouring Idempotency-Key."""
    refused = admit(request, _DIALECT, "submit")
    if refused is not None:
        return refused
    try:
        body = await read_json_object(request)
    except BodyError as exc:
        status = 413 if exc.reason == "too_large" else 400
        return _error(status, "too_large" if status == 413 else "invalid", exc.message)
    parsed, problem = parse_request(body)
    if parsed is None:
        return _error(400, "invalid", problem or "invalid request")
    sim = simulator_of(request)
    api_key = _DIALECT.read_key(request) or ""
    fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key:
        earlier = sim.tasks.get(sim.idempotency.get((api_key, idempotency_key), ""))
        if earlier is not None:
            if earlier.idempotency_fingerprint != fingerprint:
                return _error(
                    409, "conflict", "Idempotency-Key was already used with a different request body"
                )
            return JSONResponse(
                {"jobId": earlier.id, "status": earlier.status(sim.clock())},
                status_code=202,
                headers={"Idempotent-Replayed": "true"},
            )
    if sim.config.insufficient_credits:
        return _error(402, "credits", "Insufficient credits")
    throttled = refuse_past_active_limit(request, _DIALECT)
    if throttled is not None:
        return throttled
    webhook = None
    if parsed.webhook_url:
        webhook = Webhook(url=parsed.webhook_url, api_key=api_key, events=parsed.webhook_events)
    task = sim.submit(
        protocol="apiframe",
        model=parsed.model,
        prompt=parsed.prompt,
        seed=parsed.seed,
        width=parsed.width,
        height=parsed.height,
        fmt=parsed.output_format,
        base_url=base_url_of(request),
        webhook=webhook,
        callback_format=ApiframeCallbacks(),
        cost=CREDIT_COST,
        idempotency_fingerprint=fingerprint,
    )
    if idempotency_key:
        sim.idempotency[(api_key, idempotency_key)] = task.id
    return JSONResponse({"jobId": task.id, "status": "QUEUED"}, status_code=202)


async def get_job(request: Request) -> Response:
    """GET /v2/jobs/{id}: the job's status, progress and result."""
    task = polled_task(request, _DIALECT, lambda sim: sim.find(request.path_params["job_id"], "apiframe"),
                       lambda: _error(404, "not_found", "Job not found"))
    if isinstance(task, Response):
        return task
    sim = simulator_of(request)
    now = sim.clock()
    if task.phase(now) is Phase.SUCCEEDED:
        await sim.ensure_rendered(task)
    return JSONResponse(job_payload(task, now, base_url_of(request), sim.config))


def routes() -> list[Route]:
    """Apiframe's routes, auth by the X-API-Key header."""
    return [
        Route("/v2/images/generate", generate, methods=["POST"]),
        Route("/v2/jobs/{job_id}", get_job, methods=["GET"]),
    ]
