"""The templates' filters: times, ages, sizes and JSON as people read them."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


def utc(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(ms: int | None) -> str:
    """The time of day, to the millisecond (a timeline's entries are often close together)."""
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%H:%M:%S.%f")[:-3]


def ago(ms: int | None, now: int) -> str:
    """How long before `now`: "4 s ago", "3 min ago"; "in 2 s" for a time still ahead."""
    if ms is None:
        return ""
    seconds = (now - ms) / 1000
    text = span(abs(seconds))
    return f"in {text}" if seconds < 0 else f"{text} ago"


def span(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f} MB"
    return f"{n / 1000:.0f} kB" if n >= 1000 else f"{n} B"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


FILTERS: dict[str, Callable[..., str]] = {
    "utc": utc, "clock": clock, "ago": ago, "span": span, "size": size, "pretty": pretty,
}
