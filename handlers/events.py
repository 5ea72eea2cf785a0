"""GET /v1/events: the live event stream (Server-Sent Events), resumable without gaps."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from service.context import WorkContext
from service.errors import ValidationFailed
from service.fields import only_params
from storage.records import EVENT_TYPES

KEEPALIVE_S = 15.0
MAX_EVENT_ID = 2**63 - 1  # SQLite's largest INTEGER, so the largest seq


async def stream_events(request: Request) -> Response:
    """`?job_id=` and `?type=` (comma list) filter; `Last-Event-ID` (or `?last_event_id=`)
    resumes after that event, `0` replays from the start; with neither, only new events."""
    ctx: WorkContext = request.state.ctx
    params = request.query_params
    only_params(params, ("type", "job_id", "last_event_id"))
    types = tuple(t for t in (params.get("type") or "").split(",") if t)
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise ValidationFailed(
            f"unknown event type(s): {', '.join(unknown)}",
            details=[{"field": "type", "rule": "enum", "allowed": list(EVENT_TYPES)}],
        )
    resume = request.headers.get("last-event-id") or params.get("last_event_id")
    # str.isdigit() alone is not enough: it accepts "²" (which int() rejects, a 500) and "٣"
    # (which int() reads as 3); int() refuses over 4300 digits (another 500); and an id past
    # SQLite's integer range fails the first query after the 200 has gone out, breaking the stream.
    if resume is not None and not (
        resume.isascii() and resume.isdigit() and len(resume) <= 19 and int(resume) <= MAX_EVENT_ID
    ):
        raise ValidationFailed(
            "Last-Event-ID must be an event id this stream sent",
            details=[{"field": "Last-Event-ID", "rule": "format", "expected": "integer"}],
        )
    after = int(resume) if resume is not None else await ctx.store.events.latest_event_seq()
    return StreamingResponse(
        _events(ctx, after=after, job_id=params.get("job_id"), types=types),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    ctx: WorkContext, *, after: int, job_id: str | None, types: tuple[str, ...]
) -> AsyncIterator[str]:
    yield "retry: 1000\n\n"
    quiet = 0.0
    while True:
        signal = ctx.signals.events.current()
        events = await ctx.store.events.list_events(after=after, job_id=job_id, types=types, limit=200)
        for event in events:
            after = event.seq
            yield f"id: {event.seq}\nevent: {event.type}\ndata: {event.body.decode()}\n\n"
        if events:
            quiet = 0.0
            continue
        # Woken at once by events this process commits; other processes' are found by looking.
        wait = ctx.settings.worker_idle_s
        with anyio.move_on_after(wait):
            await signal.wait()
        quiet += wait
        if quiet >= KEEPALIVE_S:
            quiet = 0.0
            yield ": keep-alive\n\n"
