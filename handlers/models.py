"""GET /v1/models: what each configured provider serves, parameters as JSON Schema."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.context import WorkContext
from service.fields import only_params


async def list_models(request: Request) -> Response:
    only_params(request.query_params, ())
    ctx: WorkContext = request.state.ctx
    described = ctx.catalog.describe()
    described["providers"] = [p for p in described["providers"] if p["name"] in ctx.adapters]
    return JSONResponse(described)
