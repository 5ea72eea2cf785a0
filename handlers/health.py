"""GET /healthz: 200 when the database answers, 503 otherwise."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from handlers.errors import error_response
from service.context import WorkContext
from storage.errors import StorageUnavailable


async def healthz(request: Request) -> Response:
    ctx: WorkContext = request.state.ctx
    try:
        ok = await ctx.store.ping()
    except StorageUnavailable:
        ok = False
    if not ok:
        return error_response(503, "store_unavailable", "database does not answer")
    return JSONResponse({"status": "ok"})
