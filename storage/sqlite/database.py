"""The SQLite database: one connection per process, its transactions and its migrations.

Each store method is one synchronous function over the `sqlite3.Connection`, run in aiosqlite's
thread in a single hop (storage/sqlite/thread.py says why), so a transaction never awaits
anything, let alone the network; a lock keeps coroutines from interleaving them. Every write opens
with `BEGIN IMMEDIATE` and writes a state change together with the work it causes (the
transactional outbox): rows in `tasks` that workers carry out at least once. sqlite3 errors
become StorageUnavailable (storage/errors.py) here and nowhere else. The stores (jobs, tasks,
...) are composed over one `Database` and run their bodies through `transact` and `query`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

import aiosqlite
import anyio

from storage.errors import StorageUnavailable
from storage.records import WAKE_KINDS
from storage.rules import JobRules
from storage.sql import SQLITE
from storage.sql.stores import StoresOver
from storage.sqlite.migrations import MIGRATIONS
from storage.sqlite.thread import check_supported, run_in_connection_thread
from storage.sqlite.wakeups import OwnWrites, WalWatcher

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000  # how long a statement waits for another process's lock

class Database(StoresOver):
    """One SQLite database: its connection, its transactions and its migrations, and the stores
    composed over it, one noun each (service/contracts.py `Stores`)."""

    def __init__(self, db: aiosqlite.Connection, *, rules: JobRules, public_url: str = "") -> None:
        self._db = db
        self.path: Path | None = None  # the file, for `follow_wake_ups`
        self.rules = rules  # the state machine, event bodies, JSON (storage/rules.py)
        self._lock = anyio.Lock()
        self.public_url = public_url  # for the job documents events carry
        self.dialect = SQLITE
        self.compose_stores(self)
        self._seen_version: int | None = None  # this connection's data_version at the last look
        self.own_writes = OwnWrites()  # what the watcher needs to tell this process's commits
        self._synchronous = "FULL"  # as configured: what a commit that must be durable uses

    @classmethod
    async def open(
        cls, path: Path, *, rules: JobRules, synchronous: str = "FULL", public_url: str = ""
    ) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot open database: {exc}") from exc
        try:
            check_supported(db)
        except RuntimeError:
            with contextlib.suppress(Exception):  # best effort: the RuntimeError is the news
                await db.close()
            raise
        try:
            db.row_factory = sqlite3.Row
            # Switching a new file to WAL takes a lock SQLite does not wait for when another
            # process is opening the same file at that moment (a web and a worker started
            # together): "database is locked" at once, busy timeout or not. Tried again instead.
            await run_in_connection_thread(db, partial(_configure, synchronous=synchronous))
        except BaseException as exc:
            with contextlib.suppress(Exception):  # its thread would keep the process alive
                await db.close()
            if isinstance(exc, (sqlite3.Error, StorageUnavailable)):
                raise StorageUnavailable(f"cannot open database: {_cause(exc)}") from exc
            raise
        store = cls(db, rules=rules, public_url=public_url)
        store.path = path
        store._synchronous = synchronous.upper()
        try:
            await store.transact(partial(_migrate, rules=rules))
        except BaseException:
            with contextlib.suppress(Exception):
                await db.close()
            raise
        return store

    async def close(self) -> None:
        await self._db.close()

    async def transact(
        self, fn: Callable[[sqlite3.Connection], T], *, appends_events: bool = False,
        locked_claim: bool = False, durable: bool = True,
    ) -> T:
        """Run `fn` as one write transaction: `BEGIN IMMEDIATE`, `fn`, `COMMIT`, in one hop.
        One writer at a time: whether `fn` appends events or is a claim changes nothing here.
        `durable=False` (storage/sql/__init__.py): committed with `synchronous=NORMAL`, which in
        WAL mode writes the log without syncing it; the next durable commit syncs it all.

        Anything `fn` raises (a refusal raised by a callable the caller passed in included) rolls the
        transaction back, so a refused write changes nothing, and is raised here.
        """
        relaxed = not durable and self._synchronous not in ("NORMAL", "OFF", "1", "0")
        with self.own_writes.writing():
            return await self._run(partial(_in_transaction, fn, self._synchronous if relaxed else None,
                                           self.own_writes))

    async def transact_then_read(
        self, fn: Callable[[sqlite3.Connection], Callable[[], T]], *, appends_events: bool = False,
        durable: bool = True,
    ) -> T:
        """As `transact`; the body's result is read inside the transaction, before it commits."""
        return await self.transact(lambda conn: fn(conn)(), durable=durable)

    async def query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn`'s reads in one hop (autocommit: each statement sees committed data)."""
        return await self._run(partial(_reading, fn))

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            # Once queued, the thread runs `fn` to the end whatever happens here, so the lock
            # is held until it has: a cancelled caller still waits out its (short) transaction.
            with anyio.CancelScope(shield=True):
                result = await run_in_connection_thread(self._db, fn)
        return result

    async def follow_wake_ups(self, wake: Callable[[str], None], kinds: Collection[str] = WAKE_KINDS) -> None:
        """Until cancelled, wake each of `kinds` (storage/records.py `WAKE_KINDS`) soon after
        any process on this host commits to the file (storage/sqlite/wakeups.py says how). A
        commit does not say what it wrote, so each wakes them all: a loop woken for nothing
        looks once and finds nothing."""
        if self.path is None:
            return
        woken = [kind for kind in WAKE_KINDS if kind in kinds]

        def on_commit() -> None:
            for kind in woken:
                wake(kind)

        await WalWatcher(self.path, on_commit, elsewhere=self.committed_elsewhere,
                         own_writes=self.own_writes).run()

    async def committed_elsewhere(self) -> bool:
        """Whether another connection (another process) has committed since the last call:
        this connection's `PRAGMA data_version` changes then, and never for its own commits,
        which woke this process's loops in memory already."""
        version = await self.query(lambda conn: int(conn.execute("PRAGMA data_version").fetchone()[0]))
        changed, self._seen_version = version != self._seen_version, version
        return changed

    async def ping(self) -> bool:
        def ping(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT 1").fetchone()
            return row is not None and row[0] == 1

        return await self.query(ping)


# How a transaction runs (in the database thread) ------------------------------------------------


def _in_transaction(
    fn: Callable[[sqlite3.Connection], T], restore: str | None, own: OwnWrites, conn: sqlite3.Connection
) -> T:
    """One transaction; with `restore`, committed without syncing the log (`durable=False`),
    then `synchronous` is set back to `restore`. One that changed rows (and so wrote to the
    WAL) is noted in `own`, for the WAL watcher."""
    changes = conn.total_changes
    if restore is None:
        result = _transaction(fn, conn)
    else:
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            result = _transaction(fn, conn)
        finally:
            conn.execute(f"PRAGMA synchronous={restore}")
    if conn.total_changes != changes:
        own.wrote()
    return result


def _transaction(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    _begin_immediate(conn)
    try:
        result = fn(conn)
    except BaseException as exc:
        _roll_back(conn)
        if isinstance(exc, sqlite3.Error):
            raise StorageUnavailable(f"database write failed: {exc}") from exc
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _roll_back(conn)
        raise StorageUnavailable(f"commit failed: {exc}") from exc
    return result


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """Take the write lock, waiting for another process's write to end (BUSY_TIMEOUT_MS at
    most). SQLite's own busy handler sleeps 1, 2, 5, 10 ... ms between tries, a millisecond or
    more added to each write that meets another process's (a web and a worker on one file);
    `_while_busy` tries again sooner."""
    conn.execute("PRAGMA busy_timeout=0")
    try:
        _while_busy(lambda: conn.execute("BEGIN IMMEDIATE"), failure="database busy or unavailable")
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # the statements after wait as before


def _configure(conn: sqlite3.Connection, *, synchronous: str) -> None:
    _while_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"), failure="database busy or unavailable")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")


def _while_busy(attempt: Callable[[], object], *, failure: str) -> None:
    """`attempt()` until it does not fail with SQLITE_BUSY (another process holds the lock it
    needs), BUSY_TIMEOUT_MS at most: again after 0.1 ms, then twice as long each time, up to
    2 ms. Any other failure, or busy past the deadline, is StorageUnavailable(`failure`: ...)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.0001
    while True:
        try:
            attempt()
            return
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # SQLITE_BUSY_* included
            if not busy or time.monotonic() >= deadline:
                raise StorageUnavailable(f"{failure}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"{failure}: {exc}") from exc
        time.sleep(delay)  # in the database thread: the event loop goes on meanwhile
        delay = min(delay * 2, 0.002)


def _cause(exc: BaseException) -> BaseException:
    """The sqlite3 error behind a StorageUnavailable, for the message."""
    return exc.__cause__ if isinstance(exc, StorageUnavailable) and exc.__cause__ else exc


def _roll_back(conn: sqlite3.Connection) -> None:
    # Some errors (SQLITE_FULL, SQLITE_IOERR, ...) have already rolled the transaction back.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _reading(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    try:
        return fn(conn)
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"database read failed: {exc}") from exc


def _migrate(conn: sqlite3.Connection, *, rules: JobRules) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, step in enumerate(MIGRATIONS, start=1):
        if number <= version:
            continue
        if callable(step):  # a repair of stored rows, which SQL alone cannot express
            step(conn, rules)
        else:
            for statement in _statements(step):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={number}")


def _statements(script: str) -> Iterator[str]:
    """The statements of a script, in order; a trigger's body keeps its own semicolons."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending.strip()
            pending = ""
