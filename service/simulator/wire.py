"""Request plumbing shared by the provider modules: keys, injected faults, bounded JSON bodies."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.simulator.simulator import Simulator
from service.simulator.state import Task

# Kontext's input_image may be a base64 picture, so allow a generous body, but a bounded one.
MAX_BODY_BYTES = 25 * 1024 * 1024

# What a proxy in front of a provider sends during an outage: HTML, not the provider's JSON.
PROXY_503_HTML = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)

ErrorFn = Callable[[int, str, str], Response]


@dataclass(frozen=True)
class Dialect:
    """How one provider names its key header and words its errors.

    `error(status, reason, message)` takes a provider-neutral reason (unauthenticated,
    forbidden, rate_limited, unavailable, credits, invalid, not_found, conflict, too_large)
    and returns that provider's error response.
    """

    protocol: str
    read_key: Callable[[Request], str | None]
    error: ErrorFn


class BodyError(Exception):
    """The request body is too large, not JSON, or not a JSON object."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # too_large | invalid_json | not_object
        self.message = message


def simulator_of(request: Request) -> Simulator:
    """The Simulator behind this request's app."""
    sim: Simulator = request.app.state.simulator
    return sim


def base_url_of(request: Request) -> str:
    """The simulator's own base URL as this client reached it, without a trailing slash.

    Built from scope["root_path"] rather than request.base_url: under a Starlette Mount
    (fluxhook mounts the simulator at /simulator), base_url deliberately drops the mount
    prefix, which would point polling and image URLs at the host app instead.
    """
    url = request.url
    return f"{url.scheme}://{url.netloc}{request.scope.get('root_path', '')}".rstrip("/")


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def admit(request: Request, dialect: Dialect, stage: str) -> Response | None:
    """Check the API key, then maybe inject a 429/503; return the refusal or None to proceed."""
    sim = simulator_of(request)
    refused = sim.check_key(dialect.read_key(request))
    if refused == 401:
        return dialect.error(401, "unauthenticated", "Not authenticated")
    if refused == 403:
        return dialect.error(403, "forbidden", "Invalid API key")
    fault = sim.draw_fault(stage)
    if fault is None:
        return None
    if fault.status == 429:
        return too_many_requests(sim, dialect, "Too many requests, retry later")
    if fault.html:
        return Response(PROXY_503_HTML, status_code=503, media_type="text/html")
    response = dialect.error(503, "unavailable", "Service temporarily unavailable")
    response.headers["Retry-After"] = str(sim.config.retry_after_s)
    return response


def polled_task(
    request: Request, dialect: Dialect, find: Callable[[Simulator], Task | None],
    not_found: Callable[[], Response],
) -> Task | Response:
    """How every status endpoint starts: the request admitted (`admit`), the task it names
    (`find`), counted as polled; or the answer to give instead (a refusal, `not_found()`)."""
    refused = admit(request, dialect, "poll")
    if refused is not None:
        return refused
    task = find(simulator_of(request))
    if task is None:
        return not_found()
    task.poll_count += 1
    return task


def refuse_past_active_limit(request: Request, dialect: Dialect) -> Response | None:
    """429 when the account already has `max_active_tasks` active tasks, as BFL answers.

    Call it just before `Simulator.submit`, with no `await` in between, so two concurrent
    submits cannot both take the last slot.
    """
    sim = simulator_of(request)
    if not sim.at_active_limit(dialect.protocol):
        return None
    return too_many_requests(sim, dialect, "Too many active tasks, retry later")


def too_many_requests(sim: Simulator, dialect: Dialect, message: str) -> Response:
    """A counted 429 with Retry-After, in the provider's error dialect."""
    sim.stats[dialect.protocol].answered_429 += 1
    response = dialect.error(429, "rate_limited", message)
    response.headers["Retry-After"] = str(sim.config.retry_after_s)
    return response


async def read_json_object(request: Request) -> dict[str, Any]:
    """Read at most MAX_BODY_BYTES and parse a JSON object, or raise BodyError."""
    chunks: list[bytes] = []
    size = 0
    # Counting while streaming: request.body() would buffer an unbounded body first.
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyError("too_large", f"request body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        value = json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BodyError("invalid_json", f"JSON decode error: {exc}") from exc
    if not isinstance(value, dict):
        raise BodyError("not_object", "request body must be a JSON object")
    return value


def json_response(payload: Mapping[str, Any] | list[Any], status_code: int = 200) -> JSONResponse:
    """A JSON response; kept in one place so every module serialises the same way."""
    return JSONResponse(payload, status_code=status_code)


def is_int(value: Any) -> TypeGuard[int]:
    """True for a JSON integer (bool is an int in Python but not in JSON)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_http_url(value: Any) -> bool:
    """True for an absolute http(s) URL with a host; loopback http is fine for the simulator."""
    if not isinstance(value, str):
        return False
    scheme, sep, rest = value.partition("://")
    return bool(sep) and scheme.lower() in ("http", "https") and bool(rest.split("/")[0])
