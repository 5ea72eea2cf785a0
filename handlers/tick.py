"""POST /v1/tick (GET too, for Vercel Cron): a platform's scheduler runs the due work
(service/tick.py).

It has its own credential (FLUXHOOK_TICK_TOKEN), not the API key: a scheduler needs only the
right to run due work. Without it nothing is done, not even reading the query.
"""

from __future__ import annotations

import hmac
import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.context import WorkContext
from service.errors import Unauthorized, ValidationFailed
from service.tick import tick

_DECIMAL = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?", re.ASCII)


async def run_tick(request: Request) -> Response:
    """`?seconds=N` runs for at most N seconds (at most FLUXHOOK_TICK_SECONDS, the default)."""
    ctx: WorkContext = request.state.ctx
    _authorize(ctx.settings.tick_token, request.headers.get("authorization", ""))
    seconds = _seconds(request.query_params.get("seconds"), ctx.settings.tick_s)
    report = await tick(ctx, seconds=seconds)
    return JSONResponse(report.as_json())


def _authorize(token: str | None, given: str) -> None:
    scheme, _, value = given.partition(" ")
    # Compared in constant time, as bytes (compare_digest refuses non-ASCII str); an unset
    # token matches nothing, yet the comparison still runs.
    expected = (token or "").encode()
    ok = hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), expected)
    if token is None or scheme.lower() != "bearer" or not ok:
        raise Unauthorized(
            "missing or wrong tick token: send Authorization: Bearer <FLUXHOOK_TICK_TOKEN>",
            details=[{"field": "Authorization", "rule": "bearer"}],
        )


def _seconds(raw: str | None, most: float) -> float:
    if raw is None or raw == "":
        return most
    # Plain decimals only: float() also takes "nan", "inf", "1e400", " 5" and "1_0".
    value = float(raw) if _DECIMAL.fullmatch(raw) else -1.0
    if not 0 < value <= most:
        raise ValidationFailed(
            f"seconds must be a number above 0 and at most {most:g}",
            details=[{"field": "seconds", "rule": "range", "minimum": 0, "maximum": most}],
        )
    return value
