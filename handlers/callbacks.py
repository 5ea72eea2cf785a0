"""The inbound webhook endpoint providers call: POST /v1/callbacks/{provider}/{token}."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from handlers.body import read_body
from service.callbacks import ingest_callback
from service.context import WorkContext
from service.errors import ApiError
from service.inline import run_inline


async def receive_callback(request: Request) -> Response:
    ctx: WorkContext = request.state.ctx
    provider = request.path_params["provider"]
    # A provider the path names is a label only when configured: clients choose the path.
    label = provider if provider in ctx.adapters else "unknown"
    try:
        # The token is checked before the body is even read; the signature before it is parsed.
        target = ctx.tokens.read(request.path_params["token"], provider=provider)
        body = await read_body(request, limit=ctx.settings.callback_max_bytes)
        recorded = await ingest_callback(ctx, target, request.headers, body)
    except ApiError as exc:
        ctx.metrics.callback(label, "rejected", exc.code)
        raise
    if recorded.duplicate:
        ctx.metrics.callback(label, "duplicate")
    else:
        ctx.metrics.callback(label, "verified" if recorded.transition is not None else "unsigned")
    ctx.metrics.job_recorded(recorded)
    # Only now, with the callback committed, does the provider get its 2xx; in serverless mode
    # the download, the stored outputs and the notifications come first (service/inline.py).
    job = recorded.job
    if ctx.settings.serverless:
        await run_inline(ctx, job.id)
        job = await ctx.store.jobs.get_job(job.id) or job
    return JSONResponse({"received": True, "job_id": job.id,
                         "status": job.status.value, "duplicate": recorded.duplicate})
