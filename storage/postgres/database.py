"""The PostgreSQL database: a pool of psycopg connections running synchronous transaction
bodies, each in one thread hop, as the SQLite store runs them in aiosqlite's thread.

A body is a plain function over a `Connection` (storage/postgres/connection.py) that never
awaits: `transact(fn)` runs it between `BEGIN` and `COMMIT` on a connection borrowed from the
pool, in a worker thread; `query(fn)` runs reads outside a transaction, each statement seeing
what was committed before it. At most `pool_size` bodies run at once; the rest wait for a
connection. Both run pipelined (storage/postgres/connection.py): each statement is sent at
once and its result waited for only when the body reads it, so a round trip to the server is
paid per read the body waits on, not per statement (a body that sends its reads first, then
reads them, pays one).

Writes are SERIALIZABLE by default: SQLite runs one writer at a time, so a body that reads a
job and then writes what follows from it never races another; SERIALIZABLE keeps that promise
on PostgreSQL by failing one of two racing transactions, which `transact` then runs again
from the start (a body has no effect outside its transaction, so running it twice is safe).
Claims that use `FOR UPDATE SKIP LOCKED` and lease only what they locked may ask for READ
COMMITTED instead (`locked_claim`): the notifier's claim does.

psycopg errors become StorageUnavailable here and nowhere else; what a body raises itself (a
refusal) rolls the transaction back and is raised as it is. No message carries the password.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Collection
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from storage.errors import StorageUnavailable
from storage.postgres.connection import Connection, outdates_prepared
from storage.postgres.migrations import WAKE_CHANNELS, migrate
from storage.postgres.wakeups import Listener
from storage.records import WAKE_KINDS
from storage.rules import JobRules
from storage.sql import POSTGRES
from storage.sql.stores import StoresOver

T = TypeVar("T")

log = logging.getLogger(__name__)

# Failures that mean "run the transaction again", not "the database is unavailable".
RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)


class Isolation(StrEnum):
    SERIALIZABLE = "SERIALIZABLE"
    READ_COMMITTED = "READ COMMITTED"


class Database(StoresOver):
    """One PostgreSQL database: its pool, its transactions and its migrations, and the stores
    composed over it, the same as SQLite's (storage/sql/, service/contracts.py `Stores`)."""

    def __init__(
        self,
        pool: ConnectionPool[psycopg.Connection[Any]],
        *,
        url: str,
        pool_size: int,
        rules: JobRules,
        public_url: str = "",
        attempts: int = 10,
        own_backends: set[int] | None = None,
    ) -> None:
        self._pool = pool
        self.rules = rules  # the state machine, event bodies, JSON (storage/rules.py)
        self.public_url = public_url  # for the job documents events carry
        self.dialect = POSTGRES
        self.compose_stores(self)
        self._limiter = anyio.CapacityLimiter(pool_size)
        self._pool_size = pool_size
        self._attempts = attempts
        self.url = where(url)  # for messages: never the password
        self._dsn = url
        # The server processes behind this pool's connections (filled as the pool connects):
        # what they commit, this process has woken its own loops for already.
        self._own_backends = own_backends if own_backends is not None else set()

    @classmethod
    async def open(
        cls, url: str, *, pool_size: int, rules: JobRules, public_url: str = "", timeout: float = 30.0,
        attempts: int = 10,
    ) -> Database:
        """Connect `pool_size` connections to the database at `url` (a postgresql:// URL);
        StorageUnavailable if that cannot be done within `timeout` seconds."""
        own_backends: set[int] = set()
        pool: ConnectionPool[psycopg.Connection[Any]] = _LastReturnedFirst(
            url,
            configure=lambda conn: own_backends.add(conn.info.backend_pid),
            min_size=pool_size,
            max_size=pool_size,
            kwargs={"autocommit": True},  # transactions are explicit: BEGIN ... COMMIT
            timeout=timeout,
            open=False,
            name="fluxhook",
        )
        try:
            await anyio.to_thread.run_sync(partial(pool.open, wait=True, timeout=timeout))
        except (PoolTimeout, psycopg.Error) as exc:
            await anyio.to_thread.run_sync(pool.close)
            raise StorageUnavailable(f"cannot connect to PostgreSQL at {where(url)}") from exc
        return cls(pool, url=url, pool_size=pool_size, rules=rules, public_url=public_url,
                   attempts=attempts, own_backends=own_backends)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._pool.close)

    async def ping(self) -> bool:
        def ping(conn: Connection) -> bool:
            row = conn.execute("SELECT 1").fetchone()
            return row is not None and row[0] == 1

        return await self.query(ping)

    async def follow_wake_ups(self, wake: Callable[[str], None], kinds: Collection[str] = WAKE_KINDS) -> None:
        """Until cancelled, call `wake(kind)` for each notification of one of `kinds` the
        wake-up triggers send (storage/postgres/migrations.py WAKE_UPS), listening on their
        channels alone over a connection of its own; except for
        what this process committed itself, which woke its loops in memory at once (as on
        SQLite): woken twice, a worker would claim again for nothing, in the way of the work
        it has just been given."""
        channels = {channel: kind for kind, channel in WAKE_CHANNELS.items() if kind in kinds}
        await Listener(self._dsn, list(channels), lambda channel, _payload: wake(channels[channel]),
                       ignore_senders=self._own_backends).run()

    async def migrate(self) -> int:
        """Apply the numbered migrations not yet applied, under the migration lock (several
        processes may call this at once); return how many this call applied."""

        def run(conn: Connection) -> int:
            return migrate(conn.raw)

        return await self._hop(run, what="migration")

    async def transact(
        self,
        fn: Callable[[Connection], T],
        *,
        isolation: Isolation = Isolation.SERIALIZABLE,
        appends_events: bool = False,
        locked_claim: bool = False,
        durable: bool = True,
    ) -> T:
        """Run `fn` as one transaction (BEGIN, `fn`, COMMIT) in one hop, again from the start
        if PostgreSQL reports a serialization failure or a deadlock. Whatever `fn` raises rolls
        the transaction back and is raised here. Once started, a hop runs to its end even if
        this await is cancelled.

        `appends_events`: `fn` may append to the event log, so it waits for every other such
        transaction to end before it takes its snapshot (`EVENT_LOG_LOCK`). Without that, two
        SERIALIZABLE transactions appending at once both read the log's last seq and one of
        them always fails and runs again; with ten at once, some fail ten times over.

        `locked_claim`: READ COMMITTED; `durable=False`: `synchronous_commit` off for this
        transaction (storage/sql/__init__.py `SqlDatabase.transact`)."""
        if locked_claim:
            isolation = Isolation.READ_COMMITTED
        return await self._transact(partial(_in_transaction, fn, isolation, appends_events, durable))

    async def transact_then_read(
        self, fn: Callable[[Connection], Callable[[], T]], *, appends_events: bool = False,
        durable: bool = True,
    ) -> T:
        """As `transact`, for a body that returns how to read its result: read once COMMIT has
        come back, so the statements whose results it reads go out with the COMMIT."""
        return await self._transact(partial(_in_transaction_then_read, fn, appends_events, durable))

    async def _transact(self, run: Callable[[Connection], T]) -> T:
        for attempt in range(1, self._attempts + 1):
            try:
                return await self._hop(run, what="write")
            except _Retry as retry:
                if attempt == self._attempts:
                    raise StorageUnavailable(
                        f"transaction still conflicting after {attempt} attempts: {retry.reason}"
                    ) from retry.__cause__
                await anyio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise AssertionError("unreachable")

    async def query(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn`'s reads in one hop; each statement sees what was committed before it."""
        return await self._hop(partial(_pipelined_reads, fn), what="read")

    async def _hop(self, fn: Callable[[Connection], T], *, what: str) -> T:
        return await anyio.to_thread.run_sync(partial(self._borrow, fn, what), limiter=self._limiter)

    def _borrow(self, fn: Callable[[Connection], T], what: str) -> T:
        # A connection the server dropped while idle in the pool (a restart, a failover, an
        # idle timeout) fails on its first statement; nothing was done on it, so the body runs
        # on another one (the pool replaces the dropped one). Checking each connection when it
        # is borrowed would cost a round trip every time, and the pool waits between failed
        # checks: after a restart the first transaction would wait seconds.
        for _ in range(self._pool_size + 1):
            try:
                with self._pool.connection() as raw:
                    conn = Connection(raw)
                    try:
                        return fn(conn)
                    except psycopg.OperationalError:
                        if raw.broken and not conn.answered:
                            continue
                        raise
                    except psycopg.Error as exc:
                        # A migration by another process (a rolling deploy) altered a table
                        # under statements prepared here: the body failed having done nothing
                        # (rolled back), and runs again with them prepared anew.
                        if outdates_prepared(exc):
                            continue
                        raise
            except _Retry:
                raise
            except PoolTimeout as exc:
                raise StorageUnavailable(f"no database connection free ({self.url}): {exc}") from exc
            except psycopg.Error as exc:
                raise StorageUnavailable(f"database {what} failed: {_describe(exc)}") from exc
        raise StorageUnavailable(f"database {what} failed: every connection to {self.url} was dropped")


class _LastReturnedFirst(ConnectionPool[psycopg.Connection[Any]]):
    """psycopg_pool's pool lends the connection idle longest, so a process cycles through all
    of its connections; this one lends the one returned last, as PgBouncer does by default.
    At a steady rate a few connections then carry every transaction, and stay warm: a
    statement is prepared on a connection once it has run there twice (connection.py
    `_Session`), and PostgreSQL plans a prepared one once for all only after five runs, so
    spread over ten connections (two processes: twenty) most statements of a few hundred jobs
    were planned again each time, which cost the server more than running them. A server
    process in use is also one whose caches are warm. The others wait in the pool for bursts,
    as before."""

    def _get_ready_connection(self, timeout: float | None) -> psycopg.Connection[Any] | None:
        idle = getattr(self, "_pool", None)  # psycopg_pool's deque of idle connections
        if isinstance(idle, deque) and idle:
            idle.rotate(1)  # the last returned (on the right) is the one lent (on the left)
        return super()._get_ready_connection(timeout)


def where(url: str) -> str:
    """`user@host:port/dbname` of a connection URL: what a message may say, never the password."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return "(an unparsable database URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"{user}{parts.get('host', 'localhost')}{port}/{parts.get('dbname', '')}"


class _Retry(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Taken first by a transaction that may append events, before anything else, so before its
# snapshot: LOCK TABLE is the one statement a SERIALIZABLE transaction can run without taking
# its snapshot. The mode queues appenders behind each other (it conflicts with itself and with
# the ROW EXCLUSIVE lock any INSERT holds) while plain reads and FOR UPDATE claims go on. The
# event-order trigger's advisory lock (migrations.py) stays the rule for every other writer.
EVENT_LOG_LOCK = "LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"


def _in_transaction(
    fn: Callable[[Connection], T], isolation: Isolation, appends_events: bool, durable: bool,
    conn: Connection,
) -> T:
    try:
        # Pipelined: BEGIN and the lock go out with the body's first statement, COMMIT with
        # its last writes, and the writes between two reads together.
        with conn.pipelined():
            conn.execute(f"BEGIN ISOLATION LEVEL {isolation.value}")
            if not durable:  # the COMMIT returns before its log record is flushed
                conn.execute("SET LOCAL synchronous_commit = off")
            if appends_events:
                conn.execute(EVENT_LOG_LOCK)
            result = fn(conn)
            conn.execute("COMMIT")
    except RETRYABLE as exc:
        _recover(conn)
        raise _Retry(_describe(exc)) from exc
    except psycopg.Error:
        _recover(conn)
        raise
    except BaseException:
        _recover(conn)
        raise
    return result


def _pipelined_reads(fn: Callable[[Connection], T], conn: Connection) -> T:
    # Outside a transaction (autocommit), the statements the server has between two waits
    # run as one implicit one, each with its own snapshot (READ COMMITTED): as if one by one.
    try:
        with conn.pipelined():
            return fn(conn)
    except psycopg.Error:
        _recover(conn)
        raise


def _in_transaction_then_read(
    fn: Callable[[Connection], Callable[[], T]], appends_events: bool, durable: bool, conn: Connection
) -> T:
    # Every result is in once the pipelined transaction has committed: reading is local.
    return _in_transaction(fn, Isolation.SERIALIZABLE, appends_events, durable, conn)()


def _recover(conn: Connection) -> None:
    """Make a connection on which a statement failed inside the pipeline fit to lend again: roll
    back. What was prepared on it stays (a rollback does not undo a PREPARE, and the adapter
    counts as prepared only what the server answered for: storage/postgres/connection.py
    `_Session`). If rolling back fails, the connection is closed (the pool replaces it)."""
    raw = conn.raw
    if raw.broken:  # the connection is lost: the pool replaces it
        return
    try:
        if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raw.execute("ROLLBACK")
    except psycopg.Error:
        with contextlib.suppress(psycopg.Error):
            conn.raw.close()


def _describe(exc: psycopg.Error) -> str:
    """The server's message and SQLSTATE; libpq's messages name host and user, not passwords."""
    state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    return f"{str(exc).strip()}{state}"
