"""Job endpoints: submit, read, list, cancel, delete, and fetch stored outputs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import anyio
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from handlers.blobs import serve_blob
from handlers.body import read_json
from service.cancellation import cancel_job as cancel
from service.context import WorkContext
from service.cursors import decode_cursor, encode_cursor
from service.documents import job_document
from service.errors import Conflict, Gone, NotFound, ValidationFailed
from service.fields import only_params
from service.ids import new_job_id, new_webhook_secret
from service.inline import run_inline
from service.parsing import parse_count
from service.retention import delete_job as delete
from service.settings import PROVIDER_NAMES
from service.submissions import parse_job_request
from service.subscriptions import parse_job_destination
from storage.errors import IdempotencyConflict
from storage.records import JobRecord, NewJob

MAX_IDEMPOTENCY_KEY = 255
MAX_WAIT_S = 60
_DECIMAL = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?", re.ASCII)


def _ctx(request: Request) -> WorkContext:
    ctx: WorkContext = request.state.ctx
    return ctx


async def documents(ctx: WorkContext, jobs: list[JobRecord]) -> list[dict[str, Any]]:
    ids = [job.id for job in jobs]
    outputs = await ctx.store.jobs.get_outputs(ids)
    attempts = await ctx.store.jobs.get_attempts(ids)
    return [job_document(job, outputs[job.id], ctx.settings.public_url, attempts[job.id]) for job in jobs]


async def create_job(request: Request) -> Response:
    ctx = _ctx(request)
    body = await read_json(request, limit=ctx.settings.max_body_bytes)
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise ValidationFailed(
            "Idempotency-Key must be 1 to 255 characters",
            details=[{"field": "Idempotency-Key", "rule": "length"}],
        )
    parsed = parse_job_request(
        body,
        catalog=ctx.catalog,
        configured=ctx.adapters.keys(),
        order=ctx.settings.provider_order,
        own_urls=(f"{ctx.settings.public_url}/uploads/",),
    )
    webhook_url, webhook_events = parse_job_destination(ctx, body)
    now = ctx.clock()
    new = NewJob(
        id=new_job_id(now),
        provider=parsed.provider,
        model=parsed.model.name,
        input=parsed.input,
        metadata=parsed.metadata,
        webhook_secret=new_webhook_secret(),
        idempotency_key=key,
        request_hash=parsed.request_hash,
        deadline_at=now + ctx.ms(ctx.settings.job_timeout_s),
        candidates=parsed.candidates,
        webhook_url=webhook_url,
        webhook_events=webhook_events,
    )
    try:
        job, created = await ctx.store.jobs.create_job(new, now=now)
    except IdempotencyConflict as exc:
        raise Conflict(
            "Idempotency-Key was already used with a different request body",
            code="idempotency_key_reused",
            details=[{"field": "Idempotency-Key", "rule": "same_body", "job_id": exc.job_id}],
        ) from exc
    if created:
        ctx.metrics.jobs_created.labels(job.provider, job.model).inc()
        ctx.nudge()
    if ctx.settings.serverless:
        # The submit, before answering: the document then names the provider's task.
        await run_inline(ctx, job.id)
        job = await ctx.store.jobs.get_job(job.id) or job
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    [document] = await documents(ctx, [job])
    return JSONResponse(document, status_code=202, headers=headers)


async def get_job(request: Request) -> Response:
    """`?wait=N` (up to 60 s) answers as soon as the job is final, or after N seconds."""
    ctx = _ctx(request)
    job_id = request.path_params["job_id"]
    wait = _wait(request.query_params.get("wait"))
    job = await ctx.store.jobs.get_job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}", details=[{"field": "job_id", "rule": "exists"}])
    with anyio.move_on_after(wait):
        while not job.state.terminal:
            signal = ctx.signals.events.current()
            with anyio.move_on_after(ctx.settings.worker_idle_s):
                await signal.wait()
            job = await ctx.store.jobs.get_job(job_id) or job
    [document] = await documents(ctx, [job])
    return JSONResponse(document)


async def cancel_job(request: Request) -> Response:
    ctx = _ctx(request)
    job = await cancel(ctx, request.path_params["job_id"])
    await run_inline(ctx, job.id)  # serverless: the job.cancelled notifications, before answering
    [document] = await documents(ctx, [job])
    return JSONResponse(document)


async def delete_job(request: Request) -> Response:
    """200 with the job document, its outputs marked removed (`outputs_deleted_at`)."""
    ctx = _ctx(request)
    job = await delete(ctx, request.path_params["job_id"])
    [document] = await documents(ctx, [job])
    return JSONResponse(document)


async def list_jobs(request: Request) -> Response:
    ctx = _ctx(request)
    params = request.query_params
    only_params(params, ("status", "provider", "limit", "cursor"))
    status = _one_of(params, "status", ("queued", "submitted", "running", "succeeded", "failed", "cancelled"))
    provider = _one_of(params, "provider", PROVIDER_NAMES)
    limit = _limit(params.get("limit"))
    cursor = params.get("cursor")
    before = decode_cursor(cursor) if cursor else None
    jobs = await ctx.store.jobs.list_jobs(status=status, provider=provider, limit=limit + 1, before=before)
    page, more = jobs[:limit], len(jobs) > limit
    return JSONResponse(
        {
            "data": await documents(ctx, page),
            "next_cursor": encode_cursor(page[-1]) if more and page else None,
        }
    )


def _one_of(params: QueryParams, name: str, allowed: Sequence[str]) -> str | None:
    value = params.get(name) or None
    if value is not None and value not in allowed:
        raise ValidationFailed(
            f"{name} must be one of {', '.join(allowed)}",
            details=[{"field": name, "rule": "enum", "allowed": list(allowed)}],
        )
    return value


async def get_output(request: Request) -> Response:
    ctx = _ctx(request)
    job_id = request.path_params["job_id"]
    raw_index = request.path_params["index"]
    index = parse_count(raw_index, max_digits=6)
    if index is None:
        raise ValidationFailed(
            "index must be a non-negative integer",
            details=[{"field": "index", "rule": "type", "expected": "integer"}],
        )
    output = await ctx.store.jobs.get_output(job_id, index)
    if output is None:
        raise NotFound(
            f"job {job_id!r} has no stored output {raw_index}", details=[{"field": "index", "rule": "exists"}]
        )
    job = await ctx.store.jobs.get_job(job_id)
    if job is not None and job.outputs_deleted_at is not None:
        raise Gone(
            f"job {job_id!r}'s outputs were removed",
            code="output_deleted",
            details=[{"field": "index", "rule": "not_deleted"}],
        )
    etag = f'"{output.sha256}"'
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers={"ETag": etag})
    missing = NotFound(
        "stored output is missing from the blob store",
        code="blob_missing",
        details=[{"field": "index", "rule": "exists"}],
    )
    return await serve_blob(
        ctx, output.sha256, output.content_type, missing=missing,
        headers={"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"},
    )


def _wait(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    # Plain decimals only: float() also takes "nan", "inf", "1e400", " 5" and "1_0".
    value = float(raw) if _DECIMAL.fullmatch(raw) else -1.0
    if not 0 <= value <= MAX_WAIT_S:
        raise ValidationFailed(
            f"wait must be a number of seconds from 0 to {MAX_WAIT_S}",
            details=[{"field": "wait", "rule": "range", "minimum": 0, "maximum": MAX_WAIT_S}],
        )
    return value


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return 20
    limit = parse_count(raw, max_digits=3)
    if limit is None or not 1 <= limit <= 100:
        raise ValidationFailed(
            "limit must be an integer from 1 to 100",
            details=[{"field": "limit", "rule": "range", "minimum": 1, "maximum": 100}],
        )
    return limit
