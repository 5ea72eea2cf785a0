"""Read request bodies with a cap enforced while reading (Starlette's `body()` is unbounded)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from service.errors import MalformedRequest, PayloadTooLarge
from service.parsing import parse_count


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
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise MalformedRequest("request body is not UTF-8", code="malformed_json",
                               details=[{"field": "(body)", "rule": "utf-8"}]) from exc
    except json.JSONDecodeError as exc:
        raise MalformedRequest(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="malformed_json",
            details=[{"field": "(body)", "rule": "json", "line": exc.lineno, "column": exc.colno}],
        ) from exc


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than {limit} bytes",
                           details=[{"field": "(body)", "rule": "maxBytes", "maximum": limit}])
