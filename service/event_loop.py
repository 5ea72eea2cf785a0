"""The event loop fluxhook's long-running processes run on: uvloop, as uvicorn's "standard"
stack (uvloop and httptools) that `fluxhook serve` runs on and the benchmarks' other servers
use too (bench/). `fluxhook worker` runs on it through `run_on_uvloop`; `fluxhook tick`, a
short process that starts often, stays on asyncio's own loop and imports none of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

EVENT_LOOP = "uvloop"


def run_on_uvloop(main: Callable[[], Awaitable[T]]) -> T:
    """Run `main` to its end on a new uvloop loop (`run_leaving_open`)."""
    import uvloop

    return run_leaving_open(uvloop.new_event_loop(), main())


def run_leaving_open(loop: asyncio.AbstractEventLoop, main: Awaitable[T]) -> T:
    """Run `main` to its end on `loop`, then the tasks it left, cancelled; the loop is left
    open (`fluxhook serve` and `fluxhook worker`): a uvloop loop's close waits for every DNS
    lookup still in libuv's threads, which cannot be abandoned, and held a stopped `fluxhook
    serve` for over 30 s once lookups of webhook hosts were queued behind a slow resolver. By
    then everything has stopped and every task is done, so the process just exits."""
    asyncio.set_event_loop(loop)
    try:
        result = loop.run_until_complete(main)
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        return result
    finally:
        asyncio.set_event_loop(None)
