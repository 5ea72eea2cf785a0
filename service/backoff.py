"""Retry delays: exponential with jitter, capped, and never sooner than the server asked."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from service.parsing import parse_count


def next_delay(attempt: int, *, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Seconds to wait before try `attempt + 1` (attempt counts from 0).

    "Equal jitter" (AWS architecture blog, "Exponential Backoff and Jitter"): half the
    exponential step is kept, half is random, so retries spread out without collapsing to 0.
    """
    step = min(cap, base * 2.0 ** max(attempt, 0))
    return step / 2 + rand() * step / 2


def retry_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    rand: Callable[[], float],
    retry_after: float | None = None,
) -> float:
    """Like `next_delay`, but honouring a server's `Retry-After` as a floor."""
    delay = next_delay(attempt, base=base, cap=cap, rand=rand)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def parse_retry_after(value: str | None, *, now_ms: int) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    seconds = parse_count(value)
    if seconds is not None:
        return float(seconds)
    from email.utils import parsedate_to_datetime  # here: the email package takes ~4 ms (cold start)

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # RFC 9110 dates are GMT by definition
    now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    return max(0.0, (when - now).total_seconds())
