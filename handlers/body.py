"""Read request bodies with a cap enforced while reading (Starlette's `body()` is unbounded)."""

from __future__ import annotations

from typing import Any

from starlette.requests import ClientDisconnect, Request

from service.errors import JsonRefused, MalformedRequest, PayloadTooLarge
from service.parsing import parse_count
from service.strict_json import loads


async def read_body(request: Request, *, limit: int) -> bytes:
    declared = parse_count(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise _too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise _too_large(limit)
    except ClientDisconnect as exc:
        raise MalformedRequest("client disconnected before sending the whole body") from exc
    return bytes(body)


async def read_json(request: Request, *, limit: int) -> Any:
    body = await read_body(request, limit=limit)
    if not body.strip():
        raise MalformedRequest("request body is empty; expected JSON",
                               code="malformed_json", details=[{"field": "(body)", "rule": "json"}])
    try:
        return loads(body)
    except JsonRefused as exc:
        # 400 when the body is not JSON (NaN included), 422 naming the value otherwise.
        raise exc.as_api_error() from exc


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than {limit} bytes",
                           details=[{"field": "(body)", "rule": "maxBytes", "maximum": limit}])
