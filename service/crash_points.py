"""Named points where a crash test can kill the process, deterministically.

`FLUXHOOK_CRASH_AT=submit.answered` makes the process SIGKILL itself right after a provider
has answered a submit and before fluxhook commits the answer: the moment a crash could make it
pay twice. A real SIGKILL, not an exception: nothing after it runs, no `finally`, no flush.
Unset (the default), a crash point costs a set lookup.
"""

from __future__ import annotations

import logging
import os
import signal

from service.settings import CRASH_POINTS, Settings

log = logging.getLogger("fluxhook.crash_points")

POINTS = CRASH_POINTS


def crash_point(settings: Settings, name: str) -> None:
    """SIGKILL this process here if `name` is among `FLUXHOOK_CRASH_AT`."""
    assert name in POINTS, name
    if name in settings.crash_at:
        log.warning("FLUXHOOK_CRASH_AT: killing this process at %s", name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
