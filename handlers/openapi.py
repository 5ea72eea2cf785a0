"""GET /openapi.json: the OpenAPI 3.1 document (service/openapi.py), for this configuration."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.context import WorkContext
from service.openapi import openapi_document
from storage.records import EVENT_TYPES, JOB_EVENT_TYPES


def _version() -> str:
    try:
        return version("fluxhook")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0.0.0"


async def openapi(request: Request) -> Response:
    """Public, like the API's own README: it describes routes, never data."""
    ctx: WorkContext = request.state.ctx
    return JSONResponse(openapi_document(ctx.catalog, ctx.adapters.keys(), event_types=EVENT_TYPES,
                                         job_event_types=JOB_EVENT_TYPES, version=_version()))
