"""GET /metrics: Prometheus's text format (service/metrics.py says what is counted where)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service.context import WorkContext

# Prometheus's text format; prometheus-client itself is imported on first use (WorkContext.metrics).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def metrics(request: Request) -> Response:
    ctx: WorkContext = request.state.ctx
    await ctx.metrics.refresh(ctx.store, now=ctx.clock())
    return Response(ctx.metrics.exposition(), media_type=CONTENT_TYPE)
