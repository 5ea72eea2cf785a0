"""The work queue: the store that leases, retries and ends tasks.

Tasks are written by the job transitions in storage/sql/jobs.py, in the same transaction as the
change that causes them (the transactional outbox); workers lease them here, at least once.

Submits are held back by per-provider caps (`SubmitCaps`): a job is active at its provider from
the moment its submit is claimed until the provider's final word, and a provider at its cap gets
no more submits until one of its jobs is done. The submits waiting for one provider are claimed
in the order they became due (creation order for a first try), and a job that may use several
providers (`"provider": "auto"`) overflows to a later one with room instead of waiting.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from storage.records import JobRecord, SubmitCaps, TaskKind, TaskLease, TaskRecord

if TYPE_CHECKING:
    from storage.sql import Conn, Row, SqlDatabase


@dataclass(frozen=True)
class _Pick:
    """A task to lease; `move_to` names the provider an overflowing submit moves to."""

    due_at: int
    task_id: int
    job_id: str = ""
    move_to: str | None = None


class TaskStore:
    """The tasks workers carry out."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def next_due_at(self, *, now: int, caps: SubmitCaps = SubmitCaps()) -> int | None:
        """When the earliest task becomes claimable: due, not leased, and (for a submit) with
        room at its provider. A provider at its cap has room again only when one of its jobs
        ends, which commits and wakes the workers, or when a claimed submit's lease runs out."""
        return await self._db.query(lambda conn: _next_due(conn, now, caps))

    async def get_tasks(self, job_id: str) -> list[TaskRecord]:
        rows = await self._db.query(
            lambda conn: conn.execute(
                "SELECT * FROM tasks WHERE job_id = ? ORDER BY kind", (job_id,)
            ).fetchall()
        )
        return [TaskRecord.from_row(r) for r in rows]

    async def count_tasks(self, *, most: int | None = None) -> dict[str, int]:
        """Per kind, the tasks waiting (due now or later). Without `most`, every one is counted,
        one index entry each (~20 ms at 100,000: /metrics). With it, submits are counted up to
        `most`, and polls and downloads up to `most` together, each an index range read no
        further: what a tick reports, at the same cost whatever the backlog."""
        if most is None:
            rows = await self._db.query(
                lambda conn: conn.execute("SELECT kind, COUNT(*) FROM tasks GROUP BY kind").fetchall()
            )
            return {row[0]: row[1] for row in rows}

        def count(conn: Conn) -> list[Any]:
            # The ranges (`provider >= ''`, `lease_until >= 0`) hold for every row: they make
            # each read a range of the kind's partial index (migrations), which LIMIT ends.
            submits = conn.execute(
                """SELECT 'submit', COUNT(*) FROM (SELECT 1 FROM tasks
                   WHERE kind = 'submit' AND provider >= '' LIMIT ?) AS found""", (most,))
            others = conn.execute(
                """SELECT kind, COUNT(*) FROM (SELECT kind FROM tasks
                   WHERE kind != 'submit' AND lease_until >= 0 LIMIT ?) AS found GROUP BY kind""", (most,))
            return [*submits.fetchall(), *others.fetchall()]

        return {row[0]: row[1] for row in await self._db.query(count) if row[1]}

    async def count_active(self, provider: str, *, now: int) -> int:
        """Jobs active at `provider`: claimed submits, and jobs sent without a final word."""
        return await self._db.query(lambda conn: sum(_active(conn, provider, now).values()))

    async def claim_due_tasks(
        self, *, now: int, limit: int, lease_ms: int, caps: SubmitCaps = SubmitCaps()
    ) -> list[TaskRecord]:
        """Lease up to `limit` due tasks, earliest due first, keeping submits within `caps`.
        The attempt is counted now, so a crash uses up a try. A download comes with its job
        (`TaskRecord.job`), read in the same transaction: on PostgreSQL with the COMMIT."""

        skip_locked = self._db.dialect.skip_locked
        decode = self._db.rules.decode

        def claim(conn: Conn) -> Callable[[], list[TaskRecord]]:
            others = _others_due(conn, now, limit)  # sent now, read after the submits' reads
            due = _submits_due(conn, now, limit, caps) + others()
            picks = sorted(due, key=lambda pick: (pick.due_at, pick.task_id))[:limit]
            if not picks:
                return list
            for pick in picks:
                if pick.move_to is not None:  # its submit task follows (a trigger, migration 7)
                    conn.execute("UPDATE jobs SET provider = ?, updated_at = ? WHERE id = ?",
                                 (pick.move_to, now, pick.job_id))
            ids = [pick.task_id for pick in picks]
            marks = ",".join("?" * len(ids))
            # On PostgreSQL a task another claimer has just locked is passed over, not waited for.
            leased = conn.execute(
                f"""UPDATE tasks SET lease_until = ?, attempts = attempts + 1
                    WHERE id IN (SELECT id FROM tasks WHERE id IN ({marks}) {skip_locked})
                    RETURNING *""",  # noqa: S608
                (now + lease_ms, *ids),
            )
            jobs = conn.execute(
                f"""SELECT * FROM jobs WHERE id IN (SELECT job_id FROM tasks WHERE id IN ({marks})
                    AND kind = ? AND lease_until = ?)""",  # noqa: S608
                (*ids, TaskKind.FETCH.value, now + lease_ms),
            )

            def read() -> list[TaskRecord]:
                tasks = [TaskRecord.from_row(r) for r in leased.fetchall()]
                found = {row["id"]: JobRecord.from_row(row, decode) for row in jobs.fetchall()}
                return sorted((replace(task, job=found.get(task.job_id)) if task.kind == TaskKind.FETCH.value
                               else task for task in tasks), key=lambda t: (t.due_at, t.id))

            return read

        return await self._db.transact_then_read(claim, durable=False)  # leases only

    async def claim_job_tasks(
        self, job_id: str, *, now: int, limit: int, lease_ms: int, caps: SubmitCaps = SubmitCaps()
    ) -> list[TaskRecord]:
        """Lease up to `limit` of one job's due tasks, as `claim_due_tasks` leases them (a task
        another process holds is passed over; the attempt is counted now). A submit is leased
        only when its provider has room under `caps`; one that does not fit is left for
        `claim_due_tasks`, which also moves it to a later candidate provider."""

        skip_locked = self._db.dialect.skip_locked

        def claim(conn: Conn) -> list[TaskRecord]:
            rows = conn.execute(
                """SELECT t.id, t.kind, t.provider, t.model, j.status,
                          EXISTS (SELECT 1 FROM attempts a
                                  WHERE a.job_id = t.job_id AND a.provider = t.provider
                                  AND a.outcome = 'unknown' AND a.provider_job_id IS NULL) AS holds_place
                   FROM tasks t JOIN jobs j ON j.id = t.job_id
                   WHERE t.job_id = ? AND t.due_at <= ? AND t.lease_until <= ?
                   ORDER BY t.due_at, t.id""",
                (job_id, now, now),
            ).fetchall()
            room = _Room(conn, now, caps)
            ids: list[int] = []
            for row in rows[:limit]:
                if row["kind"] == "submit" and not _needs_no_place(row):
                    if not room.fits(row["provider"], row["model"]):
                        continue
                    room.take(row["provider"], row["model"])
                ids.append(row["id"])
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            # The lease is checked again under the row lock: on PostgreSQL another instance
            # may have leased one of these since the SELECT above.
            leased = conn.execute(
                f"""UPDATE tasks SET lease_until = ?, attempts = attempts + 1
                    WHERE id IN (SELECT id FROM tasks
                                 WHERE id IN ({marks}) AND lease_until <= ? {skip_locked})
                    RETURNING *""",  # noqa: S608
                (now + lease_ms, *ids, now),
            ).fetchall()
            return sorted((TaskRecord.from_row(r) for r in leased), key=lambda t: (t.due_at, t.id))

        return await self._db.transact(claim, durable=False)  # leases only

    async def unfinished_for_job(self, job_id: str, *, now: int) -> int:
        """How many of the job's tasks are being carried out (leased) or due now; a submit only
        when leased (one that is due may be waiting for room under its provider's cap)."""
        row = await self._db.query(lambda conn: conn.execute(
            "SELECT COUNT(*) FROM tasks WHERE job_id = ? "
            "AND (lease_until > ? OR (due_at <= ? AND kind != 'submit'))", (job_id, now, now)).fetchone())
        return int(row[0])

    async def count_due(self, *, now: int) -> dict[str, int]:
        """Per kind, the tasks due now and not leased (a submit held back by its provider's cap
        counts too: it is waiting)."""
        rows = await self._db.query(
            lambda conn: conn.execute(
                "SELECT kind, COUNT(*) FROM tasks WHERE due_at <= ? AND lease_until <= ? GROUP BY kind",
                (now, now),
            ).fetchall()
        )
        return {row[0]: row[1] for row in rows}

    async def release_tasks(self, leases: Sequence[tuple[int, int]]) -> int:
        """Hand back tasks this process leased but did not finish (it is stopping): due again
        at once for any worker, and the interrupted run is not counted as an attempt. Each is
        `(task id, lease_until as claimed)`; a task whose lease is no longer that one (it was
        finished or rescheduled, or the lease ran out and another worker holds it) is left
        alone. How many were handed back."""

        def release(conn: Conn) -> int:
            return sum(
                conn.execute(
                    "UPDATE tasks SET lease_until = 0, "
                    "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
                    "WHERE id = ? AND lease_until = ?",
                    (task_id, lease_until),
                ).rowcount
                for task_id, lease_until in leases
            )

        return await self._db.transact(release)

    async def retry_task(self, task_id: int, *, due_at: int, error: str) -> None:
        def retry(conn: Conn) -> None:
            conn.execute(
                "UPDATE tasks SET due_at = ?, lease_until = 0, last_error = ? WHERE id = ?",
                (due_at, error[:500], task_id),
            )

        await self._db.transact(retry)

    async def finish_task(self, task_id: int) -> None:
        def finish(conn: Conn) -> None:
            conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,))

        await self._db.transact(finish)


# Claiming (inside the transaction) ---------------------------------------------------------------
# Every query below reads an index range (migration 7): the polls and fetches in due order, one
# provider's (or one model's) submits in due order, its leased submits, its active jobs. A model
# at its cap is never walked, so a long queue for it costs nothing to the others.

_WAITING = """SELECT t.id, t.job_id, t.due_at, t.model, j.status, j.candidates,
                     EXISTS (SELECT 1 FROM attempts a WHERE a.job_id = t.job_id AND a.provider = t.provider
                             AND a.outcome = 'unknown' AND a.provider_job_id IS NULL) AS holds_place
              FROM tasks t JOIN jobs j ON j.id = t.job_id
              WHERE t.kind = 'submit' AND t.provider = ? {model} AND t.due_at <= ? AND +t.lease_until <= ?
              ORDER BY t.due_at, t.id"""
# The submits waiting (due, not leased) for one provider, or for one of its models, walked in due
# order; `+lease_until` keeps the planner from walking the (short) leased range instead.
_WAITING_FOR_PROVIDER = _WAITING.format(model="")
_WAITING_FOR_MODEL = _WAITING.format(model="AND t.model = ?")


def _others_due(conn: Conn, now: int, limit: int) -> Callable[[], list[_Pick]]:
    """The polls and fetches due: the query is sent now, its rows read when the result is
    called (on PostgreSQL, pipelined, with the next read's round trip)."""
    cursor = conn.execute(
        """SELECT id, due_at FROM tasks WHERE kind != 'submit' AND due_at <= ? AND lease_until <= ?
           ORDER BY due_at LIMIT ?""",
        (now, now, limit),
    )
    return lambda: [_Pick(row["due_at"], row["id"]) for row in cursor.fetchall()]


def _submits_due(conn: Conn, now: int, limit: int, caps: SubmitCaps) -> list[_Pick]:
    """Up to `limit` submits per provider that fit its caps; then the submits at the head of a
    queue that do not fit move to a later candidate provider with room, if their job has one."""
    room = _Room(conn, now, caps)
    picks: list[_Pick] = []
    blocked: list[tuple[str, Row]] = []
    for provider in _submit_providers(conn):
        mine = _fitting(conn, provider, now, limit, room)
        picks += mine
        if len(mine) == limit:
            continue  # enough to do: nothing here needs to go elsewhere
        chosen = {pick.task_id for pick in mine}
        for row in conn.execute(f"{_WAITING_FOR_PROVIDER} LIMIT ?", (provider, now, now, limit)):
            if row["id"] in chosen:
                continue
            if _needs_no_place(row):
                picks.append(_Pick(row["due_at"], row["id"]))
            elif not room.fits(provider, row["model"]):
                blocked.append((provider, row))
    for provider, row in blocked:
        later = _later_candidates(row["candidates"], provider)
        target = next((p for p in later if p in caps.providers and room.fits(p, row["model"])), None)
        if target is not None:
            room.take(target, row["model"])
            picks.append(_Pick(row["due_at"], row["id"], row["job_id"], target))
    return picks


def _fitting(conn: Conn, provider: str, now: int, limit: int, room: _Room) -> list[_Pick]:
    """Up to `limit` of the provider's waiting submits, earliest due first, within its caps:
    the queues of its models with room, merged; a model that fills up drops out."""
    queues = [conn.execute(_WAITING_FOR_MODEL, (provider, model, now, now))
              for model in _submit_models(conn, provider) if room.fits(provider, model)]
    heads = [(row["due_at"], row["id"], n, row) for n, queue in enumerate(queues)
             if (row := queue.fetchone()) is not None]
    heapq.heapify(heads)
    picks: list[_Pick] = []
    while heads and len(picks) < limit:
        _, _, n, row = heapq.heappop(heads)
        if not _needs_no_place(row):
            if not room.fits(provider, row["model"]):
                if room.free(provider) == 0:
                    break
                continue  # this model is full now: the rest of its queue waits too
            room.take(provider, row["model"])
        picks.append(_Pick(row["due_at"], row["id"]))
        if (following := queues[n].fetchone()) is not None:
            heapq.heappush(heads, (following["due_at"], following["id"], n, following))
    return picks


def _needs_no_place(row: Row) -> bool:
    """A submit whose job is no longer queued (cancelled while waiting) sends nothing: the
    submitter just ends it, so no cap holds it back. One whose earlier answer was lost already
    holds its place (its task may be running): sending again takes no second one."""
    return bool(row["status"] != "queued" or row["holds_place"])


def _next_due(conn: Conn, now: int, caps: SubmitCaps) -> int | None:
    others = _others_next_due(conn, now)  # sent now, read with the first submit query's answer
    times: list[int] = []
    room = _Room(conn, now, caps)
    for provider in _submit_providers(conn):
        for model in _submit_models(conn, provider):
            if not room.fits(provider, model):
                continue
            first = conn.execute(
                """SELECT due_at FROM tasks
                   WHERE kind = 'submit' AND provider = ? AND model = ? AND +lease_until <= ?
                   ORDER BY due_at, id LIMIT 1""",
                (provider, model, now),
            ).fetchone()
            if first is not None:
                times.append(first[0])
        leased = conn.execute(
            """SELECT MIN(lease_until) FROM tasks
               WHERE kind = 'submit' AND provider = ? AND lease_until > ?""",
            (provider, now),
        ).fetchone()
        if leased[0] is not None:
            times.append(leased[0])  # a crashed worker's submit: claimable again, its slot free
    return min([*others(), *times], default=None)


# A task is claimable from MAX(due_at, lease_until). The earliest over all polls and downloads
# is the least of three index ranges, never a MIN over every waiting task (which read them all,
# several times a second, with many jobs in flight): those due and not leased (claimed as they
# fall due, so few), the first not leased falling due later, and those leased (few: in flight).
_OTHERS_CLAIMABLE = "SELECT MIN(CASE WHEN due_at > lease_until THEN due_at ELSE lease_until END) FROM tasks "
_OTHERS_NEXT = (
    (_OTHERS_CLAIMABLE + "WHERE kind != 'submit' AND due_at <= ? AND +lease_until <= ?", 2),
    ("SELECT due_at FROM tasks WHERE kind != 'submit' AND due_at > ? AND +lease_until <= ? "
     "ORDER BY due_at LIMIT 1", 2),
    (_OTHERS_CLAIMABLE + "WHERE kind != 'submit' AND lease_until > ?", 1),
)


def _others_next_due(conn: Conn, now: int) -> Callable[[], list[int]]:
    """When polls and downloads become claimable: the earliest of each range that has one.
    The queries are sent now and read when the result is called (on PostgreSQL, pipelined:
    all in one round trip)."""
    cursors = [conn.execute(sql, (now,) * count) for sql, count in _OTHERS_NEXT]

    def read() -> list[int]:
        found = [cursor.fetchone() for cursor in cursors]
        return [row[0] for row in found if row is not None and row[0] is not None]

    return read


def _submit_providers(conn: Conn) -> list[str]:
    """Each provider with a submit task, in name order."""
    return _distinct(conn, "provider", "", ())


def _submit_models(conn: Conn, provider: str) -> list[str]:
    """Each model with a submit task at `provider`, in name order."""
    return _distinct(conn, "model", "AND provider = ?", (provider,))


def _distinct(conn: Conn, column: str, where: str, params: tuple[str, ...]) -> list[str]:
    """The distinct values of a submit tasks' column: one index seek per value, not a scan."""
    sql = (f"SELECT {column} FROM tasks WHERE kind = 'submit' {where} AND {column} {{}} ? "  # noqa: S608
           f"ORDER BY {column} LIMIT 1")
    found: list[str] = []
    row = conn.execute(sql.format(">="), (*params, "")).fetchone()
    while row is not None:
        found.append(row[0])
        row = conn.execute(sql.format(">"), (*params, row[0])).fetchone()
    return found


def _active(conn: Conn, provider: str, now: int) -> dict[str, int]:
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
        # Queued with a submit whose answer was lost (service/adoption.py): its task may be
        # running at the provider, so it holds a place while the job waits to hear of it.
        *conn.execute(
            """SELECT j.model, COUNT(DISTINCT j.id) FROM attempts a JOIN jobs j ON j.id = a.job_id
               WHERE a.provider = ? AND a.outcome = 'unknown' AND a.provider_job_id IS NULL
                 AND j.provider = a.provider AND j.status = 'queued'
                 AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.kind = 'submit'
                                 AND t.lease_until > ?)
               GROUP BY j.model""",
            (provider, now),
        ),
    ]
    for model, count in rows:
        counts[model] = counts.get(model, 0) + count
    return counts


class _Room:
    """The free places under each cap, counted once per provider and spent as submits are picked."""

    def __init__(self, conn: Conn, now: int, caps: SubmitCaps) -> None:
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


def lease_new_downloads(
    conn: Conn, job_ids: Sequence[str], *, now: int, lease: TaskLease, decode: Callable[[str], Any],
) -> Callable[[], list[TaskRecord]]:
    """Lease, for a worker in the caller's process, up to `lease.limit` of `job_ids`' downloads
    due now and held by no one (as a claim would: the attempt counted), each with its job; what
    to run, read when the result is called (on PostgreSQL, pipelined with the COMMIT)."""
    marks = ",".join("?" * len(job_ids))
    leased = conn.execute(
        f"""UPDATE tasks SET lease_until = ?, attempts = attempts + 1
            WHERE id IN (SELECT id FROM tasks WHERE job_id IN ({marks}) AND kind = ?
                         AND due_at <= ? AND lease_until <= ? ORDER BY id LIMIT ?)
            RETURNING *""",  # noqa: S608
        (lease.until, *job_ids, TaskKind.FETCH.value, now, now, lease.limit),
    )
    jobs = conn.execute(
        f"""SELECT * FROM jobs WHERE id IN (SELECT job_id FROM tasks WHERE job_id IN ({marks})
            AND kind = ? AND lease_until = ?)""",  # noqa: S608
        (*job_ids, TaskKind.FETCH.value, lease.until),
    )

    def read() -> list[TaskRecord]:
        tasks = [TaskRecord.from_row(r) for r in leased.fetchall()]
        found = {row["id"]: JobRecord.from_row(row, decode) for row in jobs.fetchall()}
        return sorted((replace(task, job=found.get(task.job_id)) for task in tasks), key=lambda t: t.id)

    return read


def tasks_due_now(conn: Conn, job_ids: Sequence[str], *, now: int) -> Callable[[], bool]:
    """Whether any of `job_ids`' tasks is due now and held by no one: work for the workers."""
    marks = ",".join("?" * len(job_ids))
    cursor = conn.execute(
        f"""SELECT 1 FROM tasks WHERE job_id IN ({marks}) AND due_at <= ? AND lease_until <= ?
            LIMIT 1""",  # noqa: S608
        (*job_ids, now, now),
    )
    return lambda: cursor.fetchone() is not None
