"""The inbound webhook endpoint providers call: POST /v1/callbacks/{provider}/{token}."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from handlers.body import read_body
from service.callbacks import apply_all, ingest_callback
from service.context import WorkContext
from service.errors import ApiError
from service.inline import run_inline

log = logging.getLogger("fluxhook.callbacks")


async def receive_callback(request: Request) -> Response:
    """Answers once the callback is durably recorded. `status` is the job's status when it was
    recorded (the callback itself is applied right after, service/callbacks.py); in serverless
    mode, where the request finishes the job's work first, it is the status after that."""
    ctx: WorkContext = request.state.ctx
    provider = request.path_params["provider"]
    # A provider the path names is a label only when configured: clients choose the path.
    label = provider if provider in ctx.adapters else "unknown"
    try:
        # The token is checked before the body is even read; the signature before it is parsed.
        target = ctx.tokens.read(request.path_params["token"], provider=provider)
        body = await read_body(request, limit=ctx.settings.callback_max_bytes)
        received = await ingest_callback(ctx, target, request.headers, body)
    except ApiError as exc:
        ctx.metrics.callback(label, "rejected", exc.code)
        raise
    ctx.metrics.callback(label, "duplicate" if received.duplicate else received.judgement.verdict)
    # Only now, with the callback committed, does the provider get its 2xx; in serverless mode
    # the callback is applied, and the download, the stored outputs and the notifications come
    # first (service/inline.py).
    job_id, status = received.job.id, received.job.status
    if ctx.settings.serverless:
        try:
            await apply_all(ctx, job_id=job_id)
        except Exception:  # recorded all the same: the next tick applies it
            log.exception("job %s: applying its callbacks failed; the tick will", job_id)
        await run_inline(ctx, job_id)
        finished = await ctx.store.jobs.get_job(job_id)
        status = finished.status if finished is not None else status
    return JSONResponse({"received": True, "job_id": job_id,
                         "status": status.value, "duplicate": received.duplicate})
