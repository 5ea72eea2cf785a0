"""The stores' SQL, shared by both backends: one module per store, each a set of synchronous
transaction bodies over a sqlite3-style connection (`conn.execute(sql, params)` with `?`
placeholders, `row["column"]`), run by a database's `transact(fn)` and `query(fn)`.

storage/sqlite/database.py runs them in aiosqlite's thread; storage/postgres/database.py runs them
on a pooled psycopg connection adapted to the same API (storage/postgres/connection.py). The SQL
is written to mean the same on both; the few differences left are the `Dialect`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from storage.rules import JobRules

T = TypeVar("T")

# A sqlite3.Connection, or storage/postgres/connection.py's `Connection` (which reads like one),
# and one of their rows. The bodies use only what both have.
Conn = Any
Row = Any


@dataclass(frozen=True)
class Dialect:
    """What the stores' SQL must say differently on one backend.

    `skip_locked`: appended to a claim's sub-select of the rows it is about to lease, so that
    concurrent claimers on PostgreSQL pass over each other's rows instead of waiting for them;
    SQLite has one writer at a time and needs nothing.
    """

    name: str
    skip_locked: str = ""
    lock_rows: str = ""  # as `skip_locked`, for a claim that waits for locked rows instead

    def locking(self, table: str, *, skip: bool) -> str:
        """`skip_locked` (`lock_rows` unless `skip`) for a select that joins other tables: only
        `table`'s rows are locked."""
        clause = self.skip_locked if skip else self.lock_rows
        return clause.replace("FOR UPDATE", f"FOR UPDATE OF {table}", 1)


SQLITE = Dialect("sqlite")
POSTGRES = Dialect("postgres", skip_locked="FOR UPDATE SKIP LOCKED", lock_rows="FOR UPDATE")


class SqlDatabase(Protocol):
    """What a store needs of its database: transactions, reads, the rules, the dialect."""

    rules: JobRules
    public_url: str
    dialect: Dialect

    async def transact(
        self, fn: Callable[[Conn], T], *, appends_events: bool = False, locked_claim: bool = False,
        durable: bool = True,
    ) -> T:
        """Run `fn` as one write transaction. `appends_events`: `fn` may append to the event
        log (a job change does), so it must not overlap another transaction that does.
        `locked_claim`: `fn` writes only rows it has locked with the dialect's `skip_locked`
        and decides from nothing else, or otherwise needs no serializable snapshot (the group
        commit's bodies: storage/sql/group.py), so PostgreSQL runs it READ COMMITTED: it never
        fails to serialize, nor makes another transaction fail.

        `durable=False`: `fn` only takes leases (a claim), or writes what follows from rows
        already durable and is written again from them if lost (applying recorded callbacks,
        which leaves them in the inbox until it commits), so its commit returns without
        waiting for the disk. It is visible to every process at once and survives this process
        dying; only a power failure (SQLite) or a database server crash (PostgreSQL) can lose
        it, and then only if nothing committed after it (the log is written in order), which
        is as if the claim had never been made: the work is claimed and done again, as work
        always may be (idempotent, and a notification keeps its webhook-id)."""
        ...

    async def transact_then_read(
        self, fn: Callable[[Conn], Callable[[], T]], *, appends_events: bool = False, durable: bool = True
    ) -> T:
        """As `transact`, for a body that returns how to read its result (from cursors of
        statements it sent): PostgreSQL reads it once the transaction has committed, so those
        results come back with the COMMIT, one round trip fewer; SQLite, before committing."""
        ...

    async def query(self, fn: Callable[[Conn], T]) -> T: ...
