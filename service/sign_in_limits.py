"""How many wrong API keys one client may try: `FAILURES_PER_WINDOW` in each `WINDOW_MS`, after
which it is refused (429, with when to try again) until the window ends, right key or not. A
guess at the key then costs a minute per ten tries, from each address. Pure: the caller passes
the time; the counts live in this process's memory, which is what a login form needs (a
restart forgets them, and each of several web processes counts on its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

FAILURES_PER_WINDOW = 10
WINDOW_MS = 60_000
MAX_CLIENTS = 10_000  # clients remembered at once; past it, the least recently failing are forgotten


@dataclass
class SignInLimits:
    failures_per_window: int = FAILURES_PER_WINDOW
    window_ms: int = WINDOW_MS
    max_clients: int = MAX_CLIENTS
    _windows: dict[str, tuple[int, int]] = field(default_factory=dict)  # client -> (start, failures)

    def retry_after_s(self, client: str, *, now: int) -> int | None:
        """Seconds until `client` may try a key again, or None if it may now."""
        window = self._windows.get(client)
        if window is None:
            return None
        start, failures = window
        if now - start >= self.window_ms:
            del self._windows[client]
            return None
        if failures < self.failures_per_window:
            return None
        return max(1, math.ceil((start + self.window_ms - now) / 1000))

    def failed(self, client: str, *, now: int) -> None:
        """`client` sent a wrong key."""
        start, failures = self._windows.pop(client, (now, 0))
        if now - start >= self.window_ms:
            start, failures = now, 0
        self._windows[client] = (start, failures + 1)  # re-inserted: least recent first
        while len(self._windows) > self.max_clients:
            del self._windows[next(iter(self._windows))]
