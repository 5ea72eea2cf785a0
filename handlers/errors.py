"""One error body for every error response: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.errors import ApiError, JsonRefused, StoreUnavailable
from service.strict_json import dumps, loads, repair_text
from storage.errors import StorageUnavailable

log = logging.getLogger("fluxhook.http")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = writable({"error": {"code": code, "message": message, "details": details or []}})
    return JSONResponse(body, status_code=status, headers=headers)


def writable(body: dict[str, Any]) -> dict[str, Any]:
    """`body`, or a copy that serializes when a message quotes a client's unwritable value
    (a lone surrogate, say): the error itself must never become a 500."""
    try:
        dumps(body)
    except JsonRefused:
        # The stdlib writes a lone surrogate as an escape and NaN as a literal; the repair
        # turns them into U+FFFD and null.
        text = json.dumps(body, default=repr)
        return dict(loads(repair_text(text) or text))
    return body


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.message, exc.details)


async def json_refused(request: Request, exc: Exception) -> Response:
    # A value that reached the store and could not be serialized: refused, nothing written.
    assert isinstance(exc, JsonRefused)
    error = exc.as_api_error()
    return error_response(error.status_code, error.code, error.message, error.details)


async def storage_unavailable(request: Request, exc: Exception) -> Response:
    # The storage layer raises storage errors; this is where one becomes the API's 503.
    assert isinstance(exc, StorageUnavailable)
    error = StoreUnavailable(str(exc))
    return error_response(error.status_code, error.code, error.message, error.details)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return error_response(exc.status_code, code, str(exc.detail),
                          headers=dict(exc.headers) if exc.headers else None)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    # Log the type and place, not the exception text: it may quote a secret-bearing value.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path,
              exc_info=exc)
    return error_response(500, "internal_error", "internal error; it has been logged")


EXCEPTION_HANDLERS = {
    ApiError: api_error,
    JsonRefused: json_refused,
    StorageUnavailable: storage_unavailable,
    HTTPException: http_error,
    Exception: unexpected_error,
}
