"""The work queue: store methods that lease, retry and end tasks (mixed into Store).

Tasks are written by the job transitions in storage/store.py, in the same transaction as the
change that causes them (the transactional outbox); workers lease them here, at least once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from storage.records import TaskRecord

T = TypeVar("T")


class TaskMethods:
    """Store methods for the tasks workers carry out (mixed into Store)."""

    if TYPE_CHECKING:  # provided by Store

        async def _transact(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...
        async def _query(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def next_due_at(self) -> int | None:
        """When the earliest task becomes claimable (due and not leased)."""
        row = await self._query(
            lambda conn: conn.execute("SELECT MIN(MAX(due_at, lease_until)) FROM tasks").fetchone()
        )
        return row[0] if row and row[0] is not None else None

    async def get_tasks(self, job_id: str) -> list[TaskRecord]:
        rows = await self._query(
            lambda conn: conn.execute(
                "SELECT * FROM tasks WHERE job_id = ? ORDER BY kind", (job_id,)
            ).fetchall()
        )
        return [TaskRecord.from_row(r) for r in rows]

    async def count_tasks(self) -> dict[str, int]:
        rows = await self._query(
            lambda conn: conn.execute("SELECT kind, COUNT(*) FROM tasks GROUP BY kind").fetchall()
        )
        return {row[0]: row[1] for row in rows}

    async def claim_due_tasks(self, *, now: int, limit: int, lease_ms: int) -> list[TaskRecord]:
        """Lease up to `limit` due tasks. The attempt is counted now, so a crash uses up a try."""
        rows = await self._transact(
            lambda conn: conn.execute(
                """UPDATE tasks SET lease_until = ?, attempts = attempts + 1
                   WHERE id IN (SELECT id FROM tasks WHERE due_at <= ? AND lease_until <= ?
                                ORDER BY due_at LIMIT ?)
                   RETURNING *""",
                (now + lease_ms, now, now, limit),
            ).fetchall()
        )
        return sorted((TaskRecord.from_row(r) for r in rows), key=lambda t: t.due_at)

    async def release_tasks(self, leases: Sequence[tuple[int, int]]) -> int:
        """Hand back tasks this process leased but did not finish (it is stopping): due again
        at once for any worker, and the interrupted run is not counted as an attempt. Each is
        `(task id, lease_until as claimed)`; a task whose lease is no longer that one (it was
        finished or rescheduled, or the lease ran out and another worker holds it) is left
        alone. How many were handed back."""

        def release(conn: sqlite3.Connection) -> int:
            return sum(
                conn.execute(
                    "UPDATE tasks SET lease_until = 0, attempts = MAX(attempts - 1, 0) "
                    "WHERE id = ? AND lease_until = ?",
                    (task_id, lease_until),
                ).rowcount
                for task_id, lease_until in leases
            )

        return await self._transact(release)

    async def retry_task(self, task_id: int, *, due_at: int, error: str) -> None:
        def retry(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE tasks SET due_at = ?, lease_until = 0, last_error = ? WHERE id = ?",
                (due_at, error[:500], task_id),
            )

        await self._transact(retry)

    async def finish_task(self, task_id: int) -> None:
        def finish(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,))

        await self._transact(finish)
