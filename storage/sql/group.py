"""Group commit: many small writes from concurrent requests in one transaction and one fsync.

A caller hands `GroupCommit.run` one transaction body and waits. Whoever finds no commit in
progress takes every body waiting (up to `most`) and runs them in one transaction, each in its
own savepoint; the others wait for that commit, then the next leader takes what queued up
meanwhile. So under load one fsync makes many writes durable, and alone a write waits for
nothing. Each caller is answered only once the shared COMMIT has returned: durability is that
of a transaction of its own.

A body refuses its write by raising `Refuse(reason)`: its savepoint is rolled back, the others'
writes stand, and `reason` is raised to its caller alone. A body that can refuse only before
it writes anything says so (`run(body, refuses_first=True)`) and runs without a savepoint: it
has nothing to roll back, and a savepoint costs two statements per write.

Anything else a body raises (a driver error, a bug) fails the shared transaction; then every
body of the batch runs again in a transaction of its own, so each caller gets its own outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio

from storage.sql import Conn, SqlDatabase

T = TypeVar("T")


class Refuse(Exception):
    """Raised by a grouped body: roll back this body's writes alone and raise `reason` to its
    caller."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.reason = reason


@dataclass
class _Entry(Generic[T]):
    body: Callable[[Conn], T]
    savepoint: bool = True
    done: bool = False
    value: Any = None
    error: BaseException | None = None
    # Set when this write is settled, or when it is its caller's turn to lead the next commit.
    woken: anyio.Event | None = None

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error, self.done = value, error, True

    def wake(self) -> None:
        if self.woken is not None:
            self.woken.set()


class GroupCommit:
    """One queue of small write transactions on `db`, committed together (see the module)."""

    def __init__(self, db: SqlDatabase, *, most: int = 256) -> None:
        self._db = db
        self._most = most
        self._queue: list[_Entry[Any]] = []
        self._leading = False

    async def run(self, body: Callable[[Conn], T], *, refuses_first: bool = False) -> T:
        """Run `body` in a transaction shared with other waiting bodies; its result once
        committed. Raises what it refused with (`Refuse`), or the storage error that failed it.
        `refuses_first`: `body` raises `Refuse` only before its first write (no savepoint)."""
        entry: _Entry[T] = _Entry(body, savepoint=not refuses_first)
        self._queue.append(entry)
        try:
            while not entry.done:
                if self._leading:
                    # Woken once: when its commit ends, or to lead the next (each commit wakes
                    # its own writers and the first still waiting, not every waiter).
                    entry.woken = anyio.Event()
                    await entry.woken.wait()
                else:
                    await self._lead()
        except BaseException:
            if entry in self._queue:  # cancelled before anyone took it: it is not written
                self._queue.remove(entry)
                if not self._leading and self._queue:
                    self._queue[0].wake()  # it may have been the one woken to lead
            raise
        if entry.error is not None:
            raise entry.error
        return entry.value  # type: ignore[no-any-return]

    async def _lead(self) -> None:
        self._leading = True
        batch, self._queue = self._queue[: self._most], self._queue[self._most:]
        try:
            # Once taken, a batch is committed and its callers answered even if the leader's
            # own request is cancelled meanwhile: the others are waiting for it.
            with anyio.CancelScope(shield=True):
                await self._commit(batch)
        finally:
            self._leading = False
            for entry in batch:
                entry.wake()
            if self._queue:
                self._queue[0].wake()

    async def _commit(self, batch: list[_Entry[Any]]) -> None:
        # `locked_claim`: no serializable snapshot (PostgreSQL: READ COMMITTED). The bodies
        # insert rows (unique constraints decide between racing ones) and bump counters; what
        # they read of a job is judged again when the write is applied. Serializable, each
        # commit made the applier, which reads the inbox the commit writes and writes the
        # jobs it read, fail and run its whole batch again, more often the busier it was.
        try:
            outcomes = await self._db.transact(lambda conn: _in_savepoints(conn, batch), locked_claim=True)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].settle(error=exc)
                return
            for entry in batch:  # each alone, so what failed the batch fails only its own caller
                try:
                    entry.settle(await self._db.transact(entry.body, locked_claim=True))
                except Exception as alone:
                    entry.settle(error=alone.reason if isinstance(alone, Refuse) else alone)
            return
        for entry, (value, error) in zip(batch, outcomes, strict=True):
            entry.settle(value, error)


def _in_savepoints(conn: Conn, batch: list[_Entry[Any]]) -> list[tuple[Any, BaseException | None]]:
    outcomes: list[tuple[Any, BaseException | None]] = []
    for entry in batch:
        if entry.savepoint:
            conn.execute("SAVEPOINT grouped")
        try:
            value = entry.body(conn)
        except Refuse as refused:
            if entry.savepoint:
                conn.execute("ROLLBACK TO SAVEPOINT grouped")
            outcomes.append((None, refused.reason))
        else:
            outcomes.append((value, None))
        if entry.savepoint:
            conn.execute("RELEASE SAVEPOINT grouped")
    return outcomes

