"""Run a whole function in aiosqlite's connection thread, in one hop.

The design fixes aiosqlite as the driver, and its public API offers one thread hop per
statement (`execute`, `fetchone`, ...): an event-loop-to-thread hand-off and back, each ~0.1 ms,
paid while the store holds its lock. A transaction of twenty statements then costs more in hops
than in SQLite. aiosqlite's public API has no way to run a callable in its thread, but its
`Connection._execute(fn, *args)` does exactly that (every public method is built on it), and
`Connection._conn` is the `sqlite3.Connection` that thread created and owns. Both are private,
so they are used here and only here, and `check_supported` makes the store refuse to open, with
a clear message, if an aiosqlite release renames them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import aiosqlite

T = TypeVar("T")


def check_supported(db: aiosqlite.Connection) -> None:
    """Raise RuntimeError unless `db` has the private hooks `run_in_connection_thread` uses."""
    execute = getattr(db, "_execute", None)
    conn = getattr(db, "_conn", None)
    if not callable(execute) or not isinstance(conn, sqlite3.Connection):
        raise RuntimeError(
            f"aiosqlite {getattr(aiosqlite, '__version__', '?')} has no Connection._execute(fn) "
            "or Connection._conn (a sqlite3.Connection): fluxhook runs each transaction in the "
            "connection's thread through them (storage/sqlite/thread.py). Pin an aiosqlite that "
            "has them, or adapt that module."
        )


async def run_in_connection_thread(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Call `fn(conn)` in `db`'s own thread, with its `sqlite3.Connection`, and return its result.

    `fn` must be synchronous and must not touch the event loop. Calls run one at a time in the
    order they were made, interleaved with `db`'s other operations but never overlapping them.
    Whatever `fn` raises is raised here. Once queued, `fn` runs to the end even if this await is
    cancelled (the caller decides whether to wait for it).
    """
    execute = cast(Callable[..., Awaitable[Any]], db._execute)
    conn = db._conn  # raises ValueError if closed, as every aiosqlite method does
    return cast(T, await execute(fn, conn))
