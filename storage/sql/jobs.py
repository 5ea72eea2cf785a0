"""Jobs: one method per transaction, named for what it records.

A write applies an observation through the state machine the database was opened with
(storage/rules.py) and writes, in the same transaction, the job's new state, the event the change
is worth and the work it causes (rows in `tasks`). The bodies below run in the database's thread
(storage/sqlite/database.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from storage.errors import IdempotencyConflict, UnknownJob
from storage.records import (
    AppliedCallback,
    AppliedCallbacks,
    Attempt,
    AttemptRecord,
    CallbackJob,
    CallbackRecord,
    DeliveryLease,
    InboxCallback,
    JobRecord,
    Judgement,
    NewJob,
    Observation,
    OutputRecord,
    PollRecord,
    ReceivedCallback,
    Recorded,
    Schedule,
    StoredOutput,
    TaskKind,
    TaskLease,
    TaskOutcome,
)
from storage.rules import JobRules
from storage.sql.group import GroupCommit, Refuse
from storage.sql.notifications import (
    EventReads,
    deliveries_made,
    emit_job_event,
    lease_new_deliveries,
    send_event_reads,
)
from storage.sql.tasks import lease_new_downloads, tasks_due_now
from storage.state import (
    ADOPTED,
    ORPHANED,
    TERMINAL,
    UNKNOWN,
    Effect,
    JobState,
    JobStatus,
    TaskRole,
    Transition,
)

if TYPE_CHECKING:
    from storage.sql import Conn, SqlDatabase


class JobStore:
    def __init__(self, db: SqlDatabase) -> None:
        self._db = db
        self._grouped = GroupCommit(db)  # callbacks recorded at the same moment share a commit

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self._db.query(partial(_select_job, rules=self._db.rules, job_id=job_id))

    async def list_jobs(
        self, *, status: str | None, limit: int, before: tuple[int, str] | None, provider: str | None = None
    ) -> list[JobRecord]:
        """Newest first; `before` is the (created_at, id) of the last job already seen."""
        clauses: list[str] = []
        params: list[Any] = []
        if status:
            clauses.append("status = ?")
            params.append(status)
        if provider:
            clauses.append("provider = ?")
            params.append(provider)
        if before:
            clauses.append("(created_at, id) < (?, ?)")
            params.extend(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id DESC LIMIT ?"  # noqa: S608
        rows = await self._db.query(lambda conn: conn.execute(sql, [*params, limit]).fetchall())
        return [JobRecord.from_row(r, self._db.rules.decode) for r in rows]

    async def get_outputs(self, job_ids: Sequence[str]) -> dict[str, list[OutputRecord]]:
        result: dict[str, list[OutputRecord]] = {job_id: [] for job_id in job_ids}
        if not job_ids:
            return result
        marks = ",".join("?" * len(job_ids))
        sql = f"SELECT * FROM outputs WHERE job_id IN ({marks}) ORDER BY job_id, idx"  # noqa: S608
        for row in await self._db.query(lambda conn: conn.execute(sql, list(job_ids)).fetchall()):
            result[row["job_id"]].append(OutputRecord.from_row(row))
        return result

    async def get_output(self, job_id: str, index: int) -> OutputRecord | None:
        row = await self._db.query(
            lambda conn: conn.execute(
                "SELECT * FROM outputs WHERE job_id = ? AND idx = ?", (job_id, index)
            ).fetchone()
        )
        return OutputRecord.from_row(row) if row else None

    async def get_attempts(self, job_ids: Sequence[str]) -> dict[str, list[AttemptRecord]]:
        result: dict[str, list[AttemptRecord]] = {job_id: [] for job_id in job_ids}
        if not job_ids:
            return result
        marks = ",".join("?" * len(job_ids))
        sql = f"SELECT * FROM attempts WHERE job_id IN ({marks}) ORDER BY id"  # noqa: S608
        for row in await self._db.query(lambda conn: conn.execute(sql, list(job_ids)).fetchall()):
            result[row["job_id"]].append(AttemptRecord.from_row(row))
        return result

    async def get_callbacks(self, job_id: str) -> list[CallbackRecord]:
        """The job's callbacks as received, oldest first (without their bodies)."""
        rows = await self._db.query(lambda conn: conn.execute(
            """SELECT id, provider, verdict, state, provider_job_id, LENGTH(body) AS bytes, received_at
               FROM callbacks WHERE job_id = ? ORDER BY id""", (job_id,)).fetchall())
        return [CallbackRecord.from_row(row) for row in rows]

    async def get_polls(self, job_id: str) -> list[PollRecord]:
        """The job's answered polls, oldest first."""
        rows = await self._db.query(lambda conn: conn.execute(
            "SELECT * FROM polls WHERE job_id = ? ORDER BY id", (job_id,)).fetchall())
        return [PollRecord.from_row(row) for row in rows]

    async def record_thumbnail(self, job_id: str, index: int, thumb_sha256: str, *, now: int) -> bool:
        """Keep an output's thumbnail, unless it has one already or the job's outputs were removed
        meanwhile: then the thumbnail's image is queued for removal, as theirs were (it goes unless
        another output still references it). Whether it was kept."""

        def record(conn: Conn) -> bool:
            cursor = conn.execute(
                """UPDATE outputs SET thumb_sha256 = ?
                   WHERE job_id = ? AND idx = ? AND thumb_sha256 IS NULL
                     AND EXISTS (SELECT 1 FROM jobs WHERE id = ? AND outputs_deleted_at IS NULL)""",
                (thumb_sha256, job_id, index, job_id),
            )
            if cursor.rowcount == 0:
                conn.execute("INSERT INTO blob_garbage (sha256, queued_at) VALUES (?, ?) "
                             "ON CONFLICT (sha256) DO NOTHING", (thumb_sha256, now))
            return bool(cursor.rowcount)

        return await self._db.transact(record)

    # Writes -----------------------------------------------------------------------------------

    async def create_job(self, new: NewJob, *, now: int) -> tuple[JobRecord, bool]:
        """Store a queued job and its submit task; an Idempotency-Key replay returns the original."""

        def create(conn: Conn) -> tuple[JobRecord, bool]:
            if new.idempotency_key:
                row = conn.execute(
                    "SELECT * FROM jobs WHERE idempotency_key = ?", (new.idempotency_key,)
                ).fetchone()
                if row is not None:
                    existing = JobRecord.from_row(row, self._db.rules.decode)
                    if existing.request_hash != new.request_hash:
                        raise IdempotencyConflict(existing.id)
                    return existing, False
            encode = self._db.rules.encode
            conn.execute(
                """INSERT INTO jobs (id, provider, model, status, input, metadata, webhook_secret,
                       idempotency_key, request_hash, created_at, updated_at, deadline_at, candidates,
                       webhook_url, webhook_events)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (new.id, new.provider, new.model, JobStatus.QUEUED.value, encode(new.input, path="input"),
                 encode(new.metadata, path="metadata"), new.webhook_secret, new.idempotency_key,
                 new.request_hash, now, now, new.deadline_at,
                 encode(list(new.candidates or (new.provider,)), path="candidates"), new.webhook_url,
                 encode(list(new.webhook_events), path="webhook_events")),
            )
            _upsert_task(conn, new.id, TaskKind.SUBMIT, now, now)
            return _must_select_job(conn, self._db.rules, new.id), True

        return await self._db.transact(create)

    async def record_observation(
        self,
        job_id: str,
        observation: Observation,
        *,
        now: int,
        schedule: Schedule = Schedule(),
        task: TaskOutcome | None = None,
        counted_poll: bool = False,
    ) -> Recorded | None:
        """Apply one observation and write the job, its follow-up work and `task`'s end."""

        def record(conn: Conn) -> Recorded | None:
            job = _select_job(conn, self._db.rules, job_id)
            if job is None:
                if task is not None:
                    conn.execute("DELETE FROM tasks WHERE id = ?", (task.task_id,))
                return None
            if counted_poll:
                conn.execute("UPDATE jobs SET poll_count = poll_count + 1 WHERE id = ?", (job_id,))
            transition = _apply_in_tx(conn, job, observation, now=now, schedule=schedule,
                                      rules=self._db.rules, public_url=self._db.public_url)
            if counted_poll:  # the job's timeline shows each answered poll (migration 11)
                conn.execute(
                    "INSERT INTO polls (job_id, provider, status, progress, at) VALUES (?, ?, ?, ?, ?)",
                    (job_id, job.provider, transition.state.status.value, transition.state.progress, now),
                )
            if task is not None:
                _end_task(conn, task, transition.state)
            return Recorded(_must_select_job(conn, self._db.rules, job_id), transition)

        return await self._db.transact(record, appends_events=True)

    async def record_callback(
        self,
        job_id: str,
        *,
        provider: str,
        body: bytes,
        judge: Callable[[CallbackJob, Iterable[AttemptRecord]], Judgement],
        now: int,
    ) -> ReceivedCallback:
        """Judge a callback against its job and record it durably, to be applied soon after
        (`apply_callbacks`): its row in `callbacks` and, unless a byte-identical copy was
        recorded before, one in `inbox`. Returns once committed.

        `judge` is pure (signature check, parsing, which task it is about) and may raise to
        refuse the callback, which then changes nothing; it runs in the database thread, against
        the job as it is in the transaction (its attempts are read only if it iterates them).
        The transaction is shared with callbacks recorded at the same moment
        (storage/sql/group.py: one fsync for all); one refused changes nothing, as it is refused
        before it writes.
        """
        digest = hashlib.sha256(body).hexdigest()

        def record(conn: Conn) -> ReceivedCallback:
            found = conn.execute(
                "SELECT id, provider, status, provider_job_id, webhook_secret FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
            if found is None:
                raise Refuse(UnknownJob(job_id))
            job = CallbackJob(found[0], found[1], JobStatus(found[2]), found[3], found[4])
            try:
                judgement = judge(job, _Attempts(conn, job_id))
            except Exception as exc:
                raise Refuse(exc) from exc
            row = conn.execute(
                """INSERT INTO callbacks (job_id, provider, body_sha256, verdict, state, body,
                                          received_at, provider_job_id)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, body_sha256) DO NOTHING
                   RETURNING id""",
                (job_id, provider, digest, judgement.verdict, judgement.state, body, now,
                 judgement.task),
            ).fetchone()
            conn.execute("UPDATE jobs SET callback_count = callback_count + 1 WHERE id = ?", (job_id,))
            if row is not None:
                conn.execute("INSERT INTO inbox (callback_id, job_id, received_at) VALUES (?, ?, ?)",
                             (row[0], job_id, now))
            return ReceivedCallback(job, judgement, duplicate=row is None)

        # Refused (unknown job, judged out) before its first write: no savepoint needed.
        return await self._grouped.run(record, refuses_first=True)

    async def pending_callbacks(self) -> int:
        """How many recorded callbacks wait in the inbox to be applied."""
        row = await self._db.query(lambda conn: conn.execute("SELECT count(*) FROM inbox").fetchone())
        return int(row[0])

    async def callbacks_waiting(self) -> bool:
        """Whether any recorded callback waits in the inbox: one index entry read at most."""
        return await self._db.query(
            lambda conn: conn.execute("SELECT callback_id FROM inbox ORDER BY callback_id LIMIT 1").fetchone()
            is not None)

    async def apply_callbacks(
        self,
        *,
        interpret: Callable[[InboxCallback, JobRecord, Iterable[AttemptRecord]], Judgement],
        now: int,
        schedule: Schedule,
        limit: int,
        job_id: str | None = None,
        applied: Callable[[InboxCallback], None] | None = None,
        lease: TaskLease | None = None,
        downloading: Callable[[str, str, tuple[str, ...]], None] | None = None,
    ) -> AppliedCallbacks:
        """Apply recorded callbacks to their jobs, oldest first (at most `limit`; only `job_id`'s
        when given), in one transaction that also deletes their inbox rows: each is applied
        exactly once, and a crash before the commit leaves them all to apply again. With
        `lease`, the downloads this makes due are leased in it too, for the caller's worker
        (storage/sql/tasks.py `lease_new_downloads`); the result also says whether other work
        is due now (tasks, deliveries), so that only the loops with something to do are woken.

        `interpret` (pure) reads a callback against its job as it is now: a verified observation
        is applied; a task from a submit whose answer was lost is adopted (or recorded as an
        orphan: service/adoption.py); for a hint the confirming poll is made due at
        `judgement.confirm_at`. What it raises is that callback's `refused` (nothing applied).
        `applied` is called after each callback's writes, inside the transaction (crash tests).
        `downloading(job_id, provider, output_urls)` is called before the writes of a callback
        that makes its job's download due, inside the transaction (service/early_downloads.py:
        the caller's worker may start it while the transaction commits).
        A byte-identical repeat was never put in the inbox, so it is never applied twice.
        """
        rules, public_url = self._db.rules, self._db.public_url
        # Several processes may apply at once on PostgreSQL: each takes rows no other holds; a
        # job's own (serverless mode's request) waits for rows another holds, then finds them gone.
        # The rows and their callbacks in one read: one round trip (PostgreSQL) rather than two.
        lock = self._db.dialect.locking("i", skip=job_id is None)
        where = "WHERE i.job_id = ?" if job_id is not None else ""
        sql = f"""SELECT c.id, c.job_id, c.provider, c.verdict, c.body, c.received_at
                  FROM inbox i JOIN callbacks c ON c.id = i.callback_id {where}
                  ORDER BY i.callback_id LIMIT ? {lock}"""  # noqa: S608

        def apply(conn: Conn) -> Callable[[], AppliedCallbacks]:
            rows = conn.execute(sql, (job_id, limit) if job_id else (limit,)).fetchall()
            if not rows:
                return lambda: AppliedCallbacks([])
            ids = [row["id"] for row in rows]
            marks = ",".join("?" * len(ids))
            conn.execute(f"DELETE FROM inbox WHERE callback_id IN ({marks})", ids)  # noqa: S608
            outcomes = []
            for row in rows:
                callback = InboxCallback(row["id"], row["job_id"], row["provider"], row["verdict"],
                                         bytes(row["body"]), row["received_at"])
                outcomes.append(_apply_callback(conn, callback, interpret, now=now, schedule=schedule,
                                                rules=rules, public_url=public_url, downloading=downloading))
                if applied is not None:
                    applied(callback)
            jobs = sorted({row["job_id"] for row in rows})
            leased = lease_new_downloads(conn, jobs, now=now, lease=lease, decode=rules.decode) if lease \
                else list
            work_due = tasks_due_now(conn, jobs, now=now)
            notify = deliveries_made(conn, jobs, now=now)
            # Read once committed: on PostgreSQL these reads go out with the COMMIT.
            return lambda: AppliedCallbacks(outcomes, tuple(leased()), work_due(), notify())

        # Not waiting for the disk: what this writes follows from the inbox, which is durable,
        # and a power loss that takes it leaves the inbox rows to apply again. Whatever acts
        # on it outside the database (a download, a notification) claims its work with a
        # durable commit first, which carries this one to disk too.
        return await self._db.transact_then_read(apply, appends_events=True, durable=False)

    async def named_tasks(self, job_id: str, provider: str) -> list[str]:
        """Provider tasks that unsigned callbacks for this job named, oldest first (a task a poll
        refuted is never named again)."""
        rows = await self._db.query(
            lambda conn: conn.execute(
                """SELECT provider_job_id FROM callbacks
                   WHERE job_id = ? AND provider = ? AND verdict = 'unsigned'
                     AND provider_job_id IS NOT NULL
                     AND provider_job_id NOT IN (
                         SELECT provider_job_id FROM callbacks
                         WHERE job_id = ? AND verdict = 'refuted' AND provider_job_id IS NOT NULL)
                   GROUP BY provider_job_id ORDER BY MIN(id)""",
                (job_id, provider, job_id),
            ).fetchall()
        )
        return [row[0] for row in rows]

    async def refute_task(self, job_id: str, task: str) -> None:
        """A task an unsigned callback named that the provider does not know: a forgery, never
        polled again."""

        def refute(conn: Conn) -> None:
            conn.execute(
                "UPDATE callbacks SET verdict = 'refuted' WHERE job_id = ? AND provider_job_id = ? "
                "AND verdict = 'unsigned'",
                (job_id, task),
            )

        await self._db.transact(refute)

    async def adopt_task(
        self,
        job_id: str,
        provider: str,
        task: str,
        observation: Observation | None,
        *,
        now: int,
        schedule: Schedule,
    ) -> Recorded | None:
        """A task a hint named, confirmed by polling it: the job adopts it, or records it as an
        orphan when the job already has a task of its own (service/adoption.py)."""

        def adopt(conn: Conn) -> Recorded | None:
            job = _select_job(conn, self._db.rules, job_id)
            if job is None:
                return None
            conn.execute("UPDATE jobs SET poll_count = poll_count + 1 WHERE id = ?", (job_id,))
            transition = _take_task(conn, job, provider, task, observation, now=now, schedule=schedule,
                                    rules=self._db.rules, public_url=self._db.public_url,
                                    how="confirmed by polling it")
            return Recorded(_must_select_job(conn, self._db.rules, job_id), transition)

        return await self._db.transact(adopt, appends_events=True)

    async def record_outputs(
        self,
        job_id: str,
        outputs: Sequence[StoredOutput],
        *,
        now: int,
        task_id: int,
        observation: Observation,
        lease: DeliveryLease | None = None,
    ) -> Recorded | None:
        """Keep the stored outputs' records and mark the job succeeded, in one transaction;
        with `lease`, the deliveries of the event this makes are leased in it too, for the
        caller's notifier (`Recorded.leased`, storage/sql/notifications.py)."""

        def record(conn: Conn) -> Callable[[], Recorded | None]:
            # Everything read is sent before the job is read, and the event is built from the
            # job as written here rather than read again: on PostgreSQL (pipelined) the reads
            # cost one round trip and the writes and COMMIT another.
            loaded = _select_job_sent(conn, self._db.rules, job_id)
            stored = conn.execute("SELECT * FROM outputs WHERE job_id = ? ORDER BY idx", (job_id,))

            def all_outputs() -> list[OutputRecord]:
                # As a read after the INSERT below would find them: a row already stored wins.
                found = {row["idx"]: OutputRecord.from_row(row) for row in stored.fetchall()}
                for out in outputs:
                    found.setdefault(out.index, OutputRecord(job_id, out.index, out.sha256, out.content_type,
                                                             out.bytes, out.source_url, now))
                return [found[index] for index in sorted(found)]

            reads = send_event_reads(conn, job_id, outputs=all_outputs)
            job = loaded()
            if job is None:
                conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
                return lambda: None
            conn.executemany(
                """INSERT INTO outputs (job_id, idx, sha256, content_type, bytes, source_url, stored_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, idx) DO NOTHING""",
                [(job_id, out.index, out.sha256, out.content_type, out.bytes, out.source_url, now)
                 for out in outputs],
            )
            transition = _apply_in_tx(conn, job, observation, now=now, schedule=Schedule(),
                                      rules=self._db.rules, public_url=self._db.public_url,
                                      reads=reads, fresh=True)
            conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
            leased = lease_new_deliveries(conn, job_id, now=now, lease=lease) if lease else list
            final = _select_job_later(conn, self._db.rules, job_id)
            return lambda: Recorded(final(), transition, leased=tuple(leased()))

        return await self._db.transact_then_read(record, appends_events=True)

    async def begin_submit(
        self, job_id: str, provider: str, *, now: int, reuse: int | None = None
    ) -> int | None:
        """Write the submit down as `unknown` before it goes out, so a crash or a lost answer
        leaves a trace (service/adoption.py); its attempt id, or None when the job is no longer
        queued. `reuse` re-sends over an earlier attempt (an idempotent provider)."""

        def begin(conn: Conn) -> int | None:
            job = _select_job(conn, self._db.rules, job_id)
            if job is None or job.status is not JobStatus.QUEUED or job.provider != provider:
                return None
            if reuse is not None:
                conn.execute("UPDATE attempts SET message = NULL WHERE id = ?", (reuse,))
                return reuse
            row = conn.execute(
                "INSERT INTO attempts (job_id, provider, outcome, at) VALUES (?, ?, ?, ?) RETURNING id",
                (job_id, provider, UNKNOWN, now),
            ).fetchone()
            return int(row[0])

        return await self._db.transact(begin)

    async def record_submit(
        self,
        job_id: str,
        attempt: Attempt,
        *,
        now: int,
        task: TaskOutcome,
        observation: Observation | None = None,
        schedule: Schedule = Schedule(),
        switch_to: str | None = None,
        attempt_id: int | None = None,
    ) -> Recorded | None:
        """One submit's outcome: its attempt row (written over the `unknown` one `begin_submit`
        wrote, when given), the job's change (accepted, rejected, or moved to the next
        provider), and the submit task's end, in one transaction."""

        def record(conn: Conn) -> Recorded | None:
            job = _select_job(conn, self._db.rules, job_id)
            if job is None:
                conn.execute("DELETE FROM tasks WHERE id = ?", (task.task_id,))
                return None
            _write_attempt(conn, job_id, attempt, now=now, attempt_id=attempt_id)
            transition = None
            if switch_to is not None and job.status is JobStatus.QUEUED:
                conn.execute("UPDATE jobs SET provider = ?, updated_at = ? WHERE id = ?",
                             (switch_to, now, job_id))
            if observation is not None:
                transition = _apply_in_tx(conn, job, observation, now=now, schedule=schedule,
                                          rules=self._db.rules, public_url=self._db.public_url)
            _end_task(conn, task, transition.state if transition else job.state)
            return Recorded(_must_select_job(conn, self._db.rules, job_id), transition)

        return await self._db.transact(record, appends_events=True)


# Transaction bodies (they run inside `Database.transact`) ----------------------------------------


def _select_job(conn: Conn, rules: JobRules, job_id: str) -> JobRecord | None:
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return JobRecord.from_row(row, rules.decode) if row else None


def _select_job_sent(conn: Conn, rules: JobRules, job_id: str) -> Callable[[], JobRecord | None]:
    """A job, if there is one: the query is sent now, the row read when called."""
    cursor = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def read() -> JobRecord | None:
        row = cursor.fetchone()
        return JobRecord.from_row(row, rules.decode) if row else None

    return read


def _select_job_later(conn: Conn, rules: JobRules, job_id: str) -> Callable[[], JobRecord]:
    """A job written in this transaction: the query is sent now, the row read when called."""
    read = _select_job_sent(conn, rules, job_id)

    def written() -> JobRecord:
        job = read()
        assert job is not None  # written in this same transaction
        return job

    return written


def _must_select_job(conn: Conn, rules: JobRules, job_id: str) -> JobRecord:
    job = _select_job(conn, rules, job_id)
    assert job is not None  # written in this same transaction
    return job


def _select_attempts_later(conn: Conn, job_id: str) -> Callable[[], list[AttemptRecord]]:
    """The job's attempts: the query is sent now, its rows read when the result is called."""
    cursor = conn.execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY id", (job_id,))
    return lambda: [AttemptRecord.from_row(r) for r in cursor.fetchall()]


def _apply_callback(
    conn: Conn,
    callback: InboxCallback,
    interpret: Callable[[InboxCallback, JobRecord, Iterable[AttemptRecord]], Judgement],
    *,
    now: int,
    schedule: Schedule,
    rules: JobRules,
    public_url: str,
    downloading: Callable[[str, str, tuple[str, ...]], None] | None = None,
) -> AppliedCallback:
    job = _select_job(conn, rules, callback.job_id)
    if job is None:
        return AppliedCallback(callback)
    try:
        judgement = interpret(callback, job, _Attempts(conn, job.id))
    except Exception as exc:
        return AppliedCallback(callback, refused=exc)
    transition = None
    observation, confirm_at = judgement.observation, judgement.confirm_at
    if judgement.role in (TaskRole.ADOPT, TaskRole.ORPHAN) and judgement.task:
        transition = _take_task(conn, job, callback.provider, judgement.task, observation, now=now,
                                schedule=schedule, rules=rules, public_url=public_url,
                                how="named by a verified callback")
    elif observation is not None:
        if downloading is not None:
            coming = rules.apply(job.state, observation)  # pure: `_apply_in_tx` makes the same
            if Effect.FETCH_OUTPUTS in coming.effects and coming.state.output_urls:
                downloading(job.id, job.provider, tuple(coming.state.output_urls))
        written: list[JobRecord] = []
        transition = _apply_in_tx(conn, job, observation, now=now, schedule=schedule, rules=rules,
                                  public_url=public_url, fresh=True, written=written)
        return AppliedCallback(callback, Recorded(written[-1] if written else job, transition))
    elif confirm_at is not None and job.state.awaiting_provider:
        _upsert_task(conn, job.id, TaskKind.POLL, confirm_at, now)
    if transition is not None and transition.state != job.state:
        job = _written(job, job.state, transition.state, now)
    return AppliedCallback(callback, Recorded(job, transition))


class _Attempts:
    """A job's attempts, read only if iterated (a callback about the job's own task needs none)."""

    def __init__(self, conn: Conn, job_id: str) -> None:
        self._conn, self._job_id = conn, job_id

    def __iter__(self) -> Iterator[AttemptRecord]:
        return iter(_select_attempts_later(self._conn, self._job_id)())


def _write_attempt(
    conn: Conn, job_id: str, attempt: Attempt, *, now: int, attempt_id: int | None
) -> None:
    message = (attempt.message or "")[:500] or None
    if attempt_id is None:
        conn.execute(
            """INSERT INTO attempts (job_id, provider, outcome, http_status, message, provider_job_id, at)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            (job_id, attempt.provider, attempt.outcome, attempt.http_status, message,
             attempt.provider_job_id, now),
        )
        return
    # A callback may have adopted this very task while its answer was on the way: the answer
    # settles it as accepted, but an error answer never overwrites what the callback proved.
    conn.execute(
        """UPDATE attempts SET outcome = ?, http_status = ?, message = ?,
               provider_job_id = COALESCE(?, provider_job_id)
           WHERE id = ? AND (outcome = ? OR ? = 'accepted')""",
        (attempt.outcome, attempt.http_status, message, attempt.provider_job_id, attempt_id,
         UNKNOWN, attempt.outcome),
    )


def _take_task(
    conn: Conn,
    job: JobRecord,
    provider: str,
    task: str,
    observation: Observation | None,
    *,
    now: int,
    schedule: Schedule,
    rules: JobRules,
    public_url: str,
    how: str,
) -> Transition | None:
    """A provider task from one of this job's own submits whose answer was lost.

    A job with no task yet adopts it (as if the submit's answer had arrived) and stops waiting
    to submit again. A job that already has one keeps it; the other is an orphan, recorded, and
    its result is used only if it is the first to arrive (one result, never two).
    """
    if job.provider_job_id is None and job.provider == provider and not job.state.terminal:
        _mark_attempt(conn, job.id, provider, task, ADOPTED, now=now, how=how)
        conn.execute("DELETE FROM tasks WHERE job_id = ? AND kind = ?", (job.id, TaskKind.SUBMIT.value))
        transition = _apply_in_tx(conn, job, rules.accepted(task), now=now, schedule=schedule,
                                  rules=rules, public_url=public_url)
        if observation is not None:
            transition = _apply_in_tx(conn, _must_select_job(conn, rules, job.id), observation, now=now,
                                      schedule=schedule, rules=rules, public_url=public_url)
        return transition
    first_result = (observation is not None and rules.is_result(observation)
                    and job.state.awaiting_provider)
    _mark_attempt(conn, job.id, provider, task, ADOPTED if first_result else ORPHANED, now=now, how=how)
    if first_result and observation is not None:
        return _apply_in_tx(conn, job, observation, now=now, schedule=schedule, rules=rules,
                            public_url=public_url)
    return None


def _mark_attempt(
    conn: Conn, job_id: str, provider: str, task: str, outcome: str, *, now: int, how: str
) -> None:
    """Give the provider task its attempt: the one already naming it, else the oldest submit
    whose answer never came, else a new row (a task no attempt accounts for)."""
    row = conn.execute(
        "SELECT id, outcome FROM attempts WHERE job_id = ? AND provider = ? AND provider_job_id = ?",
        (job_id, provider, task),
    ).fetchone()
    if row is None:
        row = conn.execute(
            """SELECT id, outcome FROM attempts WHERE job_id = ? AND provider = ? AND outcome = ?
                   AND provider_job_id IS NULL ORDER BY id LIMIT 1""",
            (job_id, provider, UNKNOWN),
        ).fetchone()
    message = f"its submit's answer was lost; task {how}"
    if row is None:
        conn.execute(
            """INSERT INTO attempts (job_id, provider, outcome, message, provider_job_id, at)
               VALUES (?, ?, ?, ?, ?, ?)""",
            (job_id, provider, outcome, message, task, now),
        )
    elif row["outcome"] in (UNKNOWN, ORPHANED):
        conn.execute("UPDATE attempts SET outcome = ?, message = ?, provider_job_id = ? WHERE id = ?",
                     (outcome, message, task, row["id"]))


def _apply_in_tx(
    conn: Conn,
    job: JobRecord,
    observation: Observation,
    *,
    now: int,
    schedule: Schedule,
    rules: JobRules,
    public_url: str,
    reads: EventReads | None = None,
    fresh: bool = False,
    written: list[JobRecord] | None = None,
) -> Transition:
    """Apply `observation` to `job` and write what follows. `fresh`: `job` is its row as this
    transaction reads it now (nothing wrote it since it was read), so the event is built from
    the job as written here, not read again. `written`, when given, gets the job as written (if
    it changed). `reads`: the event's other reads, sent earlier (storage/sql/notifications.py
    `send_event_reads`)."""
    before = job.state
    transition = rules.apply(before, observation)
    after = transition.state
    if after != before:
        event_type = _event_for(before, after)
        # The event's number is counted in the same UPDATE as the change it records.
        new = _write_state(conn, job, before, after, now, rules, events=1 if event_type else 0)
        if written is not None:
            written.append(new)
        if event_type is not None:
            # A job read in this transaction and written only here is what its row now holds:
            # its snapshot needs no second read (nor a second decoding of its JSON).
            load = (lambda: new) if fresh else partial(_must_select_job, conn, rules, job.id)
            emit_job_event(conn, job.id, load, event_type, now=now, rules=rules, public_url=public_url,
                           reads=reads)
    for effect in transition.effects:
        _materialize(conn, job.id, effect, now=now, schedule=schedule)
    return transition


def _event_for(before: JobState, after: JobState) -> str | None:
    """The event a change is worth: a new status, or progress while running."""
    if after.status is not before.status and after.status is not JobStatus.QUEUED:
        return f"job.{after.status.value}"
    if after.status is JobStatus.RUNNING and after.progress != before.progress and after.progress is not None:
        return "job.progress"
    return None


def _written(job: JobRecord, before: JobState, after: JobState, now: int) -> JobRecord:
    """`job` as `_write_state` leaves its row."""
    submitted_at = job.submitted_at
    if submitted_at is None and after.provider_job_id and not before.provider_job_id:
        submitted_at = now
    ready_at = job.ready_at if job.ready_at is not None else (now if after.output_urls else None)
    completed_at = job.completed_at
    if completed_at is None and after.status in TERMINAL:
        completed_at = now
    return replace(
        job, status=after.status, provider_job_id=after.provider_job_id, polling_url=after.polling_url,
        output_urls=tuple(after.output_urls), error_code=after.error_code, error_message=after.error_message,
        completion_source=after.completion_source, progress=after.progress, updated_at=now,
        submitted_at=submitted_at, ready_at=ready_at, completed_at=completed_at,
    )


def _write_state(
    conn: Conn, job: JobRecord, before: JobState, after: JobState, now: int, rules: JobRules,
    *, events: int = 0,
) -> JobRecord:
    """Write the change; `events`: how many events about it the caller appends (counted in
    `event_count` here, `emit_job_event` numbers them from it)."""
    new = _written(job, before, after, now)
    if events:
        new = replace(new, event_count=job.event_count + events)
    # Only the columns that change: an index over one that does not (status, completed_at,
    # the active-at-provider set) is then left alone.
    changed = {column: getattr(new, column) for column in _STATE_COLUMNS
               if getattr(new, column) != getattr(job, column)}
    if "status" in changed:
        changed["status"] = new.status.value
    if "output_urls" in changed:
        changed["output_urls"] = rules.encode(list(new.output_urls), path="output_urls")
    if events:
        changed["event_count"] = new.event_count
    changed["updated_at"] = now
    assignments = ", ".join(f"{column} = ?" for column in changed)
    conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*changed.values(), job.id))  # noqa: S608
    return new


# What `_write_state` may change (column names, and JobRecord's fields of the same name).
_STATE_COLUMNS = ("status", "provider_job_id", "polling_url", "output_urls", "error_code", "error_message",
                  "completion_source", "progress", "submitted_at", "ready_at", "completed_at")


def _materialize(
    conn: Conn, job_id: str, effect: Effect, *, now: int, schedule: Schedule
) -> None:
    if effect is Effect.SCHEDULE_POLL and schedule.poll_at is not None:
        _upsert_task(conn, job_id, TaskKind.POLL, schedule.poll_at, now)
    elif effect is Effect.STOP_POLLING:
        conn.execute("DELETE FROM tasks WHERE job_id = ? AND kind = ?", (job_id, TaskKind.POLL.value))
    elif effect is Effect.FETCH_OUTPUTS:
        _upsert_task(conn, job_id, TaskKind.FETCH, schedule.fetch_at or now, now)
    elif effect is Effect.STOP_FETCHING:
        conn.execute("DELETE FROM tasks WHERE job_id = ? AND kind = ?", (job_id, TaskKind.FETCH.value))


def _end_task(conn: Conn, outcome: TaskOutcome, state: JobState) -> None:
    row = conn.execute("SELECT kind FROM tasks WHERE id = ?", (outcome.task_id,)).fetchone()
    if row is None:
        return  # already ended by an effect of this or a concurrent transition
    polling_over = row["kind"] == TaskKind.POLL.value and not state.awaiting_provider
    if outcome.retry_at is None or polling_over or state.terminal:
        conn.execute("DELETE FROM tasks WHERE id = ?", (outcome.task_id,))
    else:
        conn.execute(
            "UPDATE tasks SET due_at = ?, lease_until = 0, last_error = ? WHERE id = ?",
            (outcome.retry_at, outcome.error, outcome.task_id),
        )


def _upsert_task(conn: Conn, job_id: str, kind: TaskKind, due_at: int, now: int) -> None:
    # One live task per job and kind; asking again only ever brings it forward.
    conn.execute(
        """INSERT INTO tasks (job_id, kind, due_at, created_at) VALUES (?, ?, ?, ?)
           ON CONFLICT (job_id, kind) DO UPDATE SET due_at = CASE
               WHEN excluded.due_at < tasks.due_at THEN excluded.due_at ELSE tasks.due_at END""",
        (job_id, kind.value, due_at, now),
    )
