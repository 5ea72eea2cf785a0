"""The work queue: store methods that lease, retry and end tasks (mixed into Store).

Tasks are written by the job transitions in storage/store.py, in the same transaction as the
change that causes them (the transactional outbox); workers lease them here, at least once.

Submits are held back by per-provider caps (`SubmitCaps`): a job is active at its provider from
the moment its submit is claimed until the provider's final word, and a provider at its cap gets
no more submits until one of its jobs is done. The submits waiting for one provider are claimed
in the order they became due (creation order for a first try), and a job that may use several
providers (`"provider": "auto"`) overflows to a later one with room instead of waiting.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from storage.records import TaskRecord

T = TypeVar("T")


@dataclass(frozen=True)
class SubmitCaps:
    """How many jobs may be active at once: per configured provider (None: no cap), and per
    (provider, model) below that. Jobs of providers not listed are never capped, and a job
    only overflows to a listed provider."""

    providers: Mapping[str, int | None] = field(default_factory=dict)
    models: Mapping[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Pick:
    """A task to lease; `move_to` names the provider an overflowing submit moves to."""

    due_at: int
    task_id: int
    job_id: str = ""
    move_to: str | None = None


class TaskMethods:
    """Store methods for the tasks workers carry out (mixed into Store)."""

    if TYPE_CHECKING:  # provided by Store

        async def _transact(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...
        async def _query(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def next_due_at(self, *, now: int, caps: SubmitCaps = SubmitCaps()) -> int | None:
        """When the earliest task becomes claimable: due, not leased, and (for a submit) with
        room at its provider. A provider at its cap has room again only when one of its jobs
        ends, which commits and wakes the workers, or when a claimed submit's lease runs out."""
        return await self._query(lambda conn: _next_due(conn, now, caps))

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

    async def count_active(self, provider: str, *, now: int) -> int:
        """Jobs active at `provider`: claimed submits, and jobs sent without a final word."""
        return await self._query(lambda conn: sum(_active(conn, provider, now).values()))

    async def claim_due_tasks(
        self, *, now: int, limit: int, lease_ms: int, caps: SubmitCaps = SubmitCaps()
    ) -> list[TaskRecord]:
        """Lease up to `limit` due tasks, earliest due first, keeping submits within `caps`.
        The attempt is counted now, so a crash uses up a try."""

        def claim(conn: sqlite3.Connection) -> list[TaskRecord]:
            due = _others_due(conn, now, limit) + _submits_due(conn, now, limit, caps)
            picks = sorted(due, key=lambda pick: (pick.due_at, pick.task_id))[:limit]
            if not picks:
                return []
            for pick in picks:
                if pick.move_to is not None:  # its submit task follows (a trigger, migration 7)
                    conn.execute("UPDATE jobs SET provider = ?, updated_at = ? WHERE id = ?",
                                 (pick.move_to, now, pick.job_id))
            ids = [pick.task_id for pick in picks]
            marks = ",".join("?" * len(ids))
            rows = conn.execute(
                f"""UPDATE tasks SET lease_until = ?, attempts = attempts + 1
                    WHERE id IN ({marks}) RETURNING *""",  # noqa: S608
                (now + lease_ms, *ids),
            ).fetchall()
            return sorted((TaskRecord.from_row(r) for r in rows), key=lambda t: (t.due_at, t.id))

        return await self._transact(claim)

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


# Claiming (inside the transaction) ---------------------------------------------------------------
# Every query below reads an index range (migration 7): the polls and fetches in due order, one
# provider's submits in due order, one provider's leased submits, one provider's active jobs.

# The submits waiting for one provider: due, not leased, earliest due first.
_WAITING = """SELECT t.id, t.job_id, t.due_at, j.model, j.status, j.candidates
              FROM tasks t JOIN jobs j ON j.id = t.job_id
              WHERE t.kind = 'submit' AND t.provider = ? AND t.due_at <= ? AND t.lease_until <= ?
              ORDER BY t.due_at, t.id"""


def _others_due(conn: sqlite3.Connection, now: int, limit: int) -> list[_Pick]:
    rows = conn.execute(
        """SELECT id, due_at FROM tasks WHERE kind != 'submit' AND due_at <= ? AND lease_until <= ?
           ORDER BY due_at LIMIT ?""",
        (now, now, limit),
    ).fetchall()
    return [_Pick(row["due_at"], row["id"]) for row in rows]


def _submits_due(conn: sqlite3.Connection, now: int, limit: int, caps: SubmitCaps) -> list[_Pick]:
    """Up to `limit` submits per provider that fit its caps; then submits that do not fit move
    to a later candidate provider with room, if their job has one."""
    room = _Room(conn, now, caps)
    picks: list[_Pick] = []
    blocked: list[tuple[str, sqlite3.Row]] = []
    for provider in _submit_providers(conn):
        taken, offered = 0, 0
        for row in conn.execute(_WAITING, (provider, now, now)):
            if taken == limit:
                break
            if room.admits(provider, row):
                room.take(provider, row["model"])
                picks.append(_Pick(row["due_at"], row["id"]))
                taken += 1
            elif offered < limit:
                # Only the head of the queue is offered elsewhere, so this stays cheap.
                blocked.append((provider, row))
                offered += 1
            elif room.free(provider) == 0:
                break  # nothing behind it fits either; past a full model, something may
    for provider, row in blocked:
        later = _later_candidates(row["candidates"], provider)
        target = next((p for p in later if p in caps.providers and room.fits(p, row["model"])), None)
        if target is not None:
            room.take(target, row["model"])
            picks.append(_Pick(row["due_at"], row["id"], row["job_id"], target))
    return picks


def _next_due(conn: sqlite3.Connection, now: int, caps: SubmitCaps) -> int | None:
    times: list[int] = []
    row = conn.execute(
        "SELECT MIN(MAX(due_at, lease_until)) FROM tasks WHERE kind != 'submit'"
    ).fetchone()
    if row[0] is not None:
        times.append(row[0])
    room = _Room(conn, now, caps)
    for provider in _submit_providers(conn):
        if room.free(provider) != 0:
            unleased = conn.execute(
                """SELECT t.due_at, j.model, j.status FROM tasks t JOIN jobs j ON j.id = t.job_id
                   WHERE t.kind = 'submit' AND t.provider = ? AND t.lease_until <= ?
                   ORDER BY t.due_at, t.id""",
                (provider, now),
            )
            first = next((r["due_at"] for r in unleased if room.admits(provider, r)), None)
            if first is not None:
                times.append(first)
        leased = conn.execute(
            """SELECT MIN(lease_until) FROM tasks
               WHERE kind = 'submit' AND provider = ? AND lease_until > ?""",
            (provider, now),
        ).fetchone()
        if leased[0] is not None:
            times.append(leased[0])  # a crashed worker's submit: claimable again, its slot free
    return min(times, default=None)


def _submit_providers(conn: sqlite3.Connection) -> Iterator[str]:
    """Each provider with a submit task, in name order: one index seek per provider."""
    row = conn.execute(
        "SELECT provider FROM tasks WHERE kind = 'submit' AND provider >= '' ORDER BY provider LIMIT 1"
    ).fetchone()
    while row is not None:
        yield row[0]
        row = conn.execute(
            "SELECT provider FROM tasks WHERE kind = 'submit' AND provider > ? ORDER BY provider LIMIT 1",
            (row[0],),
        ).fetchone()


def _active(conn: sqlite3.Connection, provider: str, now: int) -> dict[str, int]:
    """Per model, the jobs active at `provider`: sent and awaiting the provider's final word
    (service/jobs.py JobState.awaiting_provider), or queued with their submit claimed."""
    counts: dict[str, int] = {}
    rows = [
        *conn.execute(
            """SELECT model, COUNT(*) FROM jobs
               WHERE provider = ? AND status IN ('submitted', 'running') AND output_urls = '[]'
               GROUP BY model""",
            (provider,),
        ),
        *conn.execute(
            """SELECT j.model, COUNT(*) FROM tasks t JOIN jobs j ON j.id = t.job_id
               WHERE t.kind = 'submit' AND t.provider = ? AND t.lease_until > ? AND j.status = 'queued'
               GROUP BY j.model""",
            (provider, now),
        ),
    ]
    for model, count in rows:
        counts[model] = counts.get(model, 0) + count
    return counts


class _Room:
    """The free places under each cap, counted once per provider and spent as submits are picked."""

    def __init__(self, conn: sqlite3.Connection, now: int, caps: SubmitCaps) -> None:
        self._conn, self._now, self._caps = conn, now, caps
        self._active: dict[str, dict[str, int]] = {}

    def _counts(self, provider: str) -> dict[str, int]:
        if provider not in self._active:
            self._active[provider] = _active(self._conn, provider, self._now)
        return self._active[provider]

    def free(self, provider: str) -> int | None:
        """Free places at `provider`; None when it has no cap."""
        cap = self._caps.providers.get(provider)
        if cap is None:
            return None
        return max(0, cap - sum(self._counts(provider).values()))

    def admits(self, provider: str, row: sqlite3.Row) -> bool:
        """Whether a waiting submit may be claimed now. One whose job is no longer queued
        (cancelled while waiting) sends nothing, so no cap holds it back."""
        return row["status"] != "queued" or self.fits(provider, row["model"])

    def fits(self, provider: str, model: str) -> bool:
        if self.free(provider) == 0:
            return False
        cap = self._caps.models.get((provider, model))
        return cap is None or self._counts(provider).get(model, 0) < cap

    def take(self, provider: str, model: str) -> None:
        if self._caps.providers.get(provider) is None and (provider, model) not in self._caps.models:
            return  # nothing to count
        counts = self._counts(provider)
        counts[model] = counts.get(model, 0) + 1


def _later_candidates(candidates: str, provider: str) -> list[str]:
    """The providers a job may still move to: those after `provider` in its candidates."""
    names = json.loads(candidates)
    return names[names.index(provider) + 1:] if provider in names else []
