"""The callback inbox: callbacks recorded together share a commit, a refused one rolls back alone,
and a recorded callback is applied exactly once (storage/sql/group.py, storage/sql/jobs.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from service.errors import CallbackRejected
from service.jobs import ProviderSucceeded, Source
from storage.records import (
    InboxCallback,
    JobRecord,
    Judgement,
    Schedule,
    SubscriptionRecord,
    TaskLease,
)
from storage.sql.group import GroupCommit, Refuse
from tests.test_store import NOW, submitted_job

pytestmark = pytest.mark.anyio

URL = "https://delivery.eu1.bfl.ai/r/1/sample.jpeg"


class CountingDatabase:
    """The database, counting the transactions run through it."""

    def __init__(self, database: Any) -> None:
        self.database = database
        self.transactions = 0

    async def transact(self, fn: Callable[[Any], Any], **kwargs: Any) -> Any:
        self.transactions += 1
        return await self.database.transact(fn, **kwargs)


def garbage(name: str, *, refuse: bool = False, fail: bool = False) -> Callable[[Any], str]:
    """A body writing one row (to a table nothing else here uses), then refusing or failing."""

    def body(conn: Any) -> str:
        conn.execute("INSERT INTO blob_garbage (sha256, queued_at) VALUES (?, ?)", (name, NOW))
        if refuse:
            raise Refuse(ValueError(f"{name} refused"))
        if fail:
            raise RuntimeError(f"{name} broke")
        return name

    return body


async def rows(database: Any) -> list[str]:
    found = await database.query(lambda conn: conn.execute(
        "SELECT sha256 FROM blob_garbage ORDER BY sha256").fetchall())
    return [row[0] for row in found]


async def run_at_once(group: GroupCommit, bodies: list[Callable[[Any], str]]) -> list[object]:
    outcomes: list[object] = [None] * len(bodies)

    async def one(n: int) -> None:
        try:
            outcomes[n] = await group.run(bodies[n])
        except Exception as exc:
            outcomes[n] = exc

    async with anyio.create_task_group() as tasks:
        for n in range(len(bodies)):
            tasks.start_soon(one, n)
    return outcomes


async def test_writes_waiting_together_share_one_commit_and_a_refused_one_rolls_back_alone(database):
    counting = CountingDatabase(database)
    bodies = [garbage("a"), garbage("b"), garbage("c", refuse=True), garbage("d"), garbage("e")]

    outcomes = await run_at_once(GroupCommit(counting), bodies)  # type: ignore[arg-type]

    assert outcomes[:2] == ["a", "b"] and outcomes[3:] == ["d", "e"]
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "c refused"
    assert await rows(database) == ["a", "b", "d", "e"]
    # The first to arrive commits alone (nothing else waited yet); the four that queued
    # meanwhile share the next commit.
    assert counting.transactions == 2


async def test_a_write_that_breaks_the_shared_transaction_fails_alone(database):
    bodies = [garbage("a"), garbage("b"), garbage("c", fail=True), garbage("d")]

    outcomes = await run_at_once(GroupCommit(database), bodies)

    assert outcomes[:2] == ["a", "b"] and outcomes[3] == "d"
    assert isinstance(outcomes[2], RuntimeError)
    assert await rows(database) == ["a", "b", "d"]


async def test_a_write_refused_before_it_writes_needs_no_savepoint_and_fails_alone(database):
    group = GroupCommit(database)

    def refused_first(conn: Any) -> str:
        raise Refuse(ValueError("c refused before writing"))

    outcomes: list[object] = [None] * 4
    bodies = [garbage("a"), garbage("b"), refused_first, garbage("d")]

    async def one(n: int) -> None:
        try:
            outcomes[n] = await group.run(bodies[n], refuses_first=True)
        except Exception as exc:
            outcomes[n] = exc

    async with anyio.create_task_group() as tasks:
        for n in range(len(bodies)):
            tasks.start_soon(one, n)

    assert outcomes[:2] == ["a", "b"] and outcomes[3] == "d"
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "c refused before writing"
    assert await rows(database) == ["a", "b", "d"]


def ready(callback: InboxCallback, job: JobRecord, attempts: list[Any]) -> Judgement:
    succeeded = ProviderSucceeded(Source.CALLBACK, (URL,))
    return Judgement(callback.verdict, "ready", succeeded, task=job.provider_job_id)


def judged(verdict: str = "verified") -> Callable[[Any, list[Any]], Judgement]:
    return lambda job, attempts: Judgement(verdict, "ready", task=job.provider_job_id)


async def apply(database: Any, interpret: Any = ready, **kwargs: Any) -> list[Any]:
    applied = await database.jobs.apply_callbacks(interpret=interpret, now=NOW + 5, limit=10,
                                                  schedule=Schedule(fetch_at=NOW + 5), **kwargs)
    return applied.outcomes


async def test_a_recorded_callback_is_applied_once_and_a_byte_identical_repeat_is_never_queued(database):
    job = await submitted_job(database)
    first = await database.jobs.record_callback(job.id, provider="bfl", body=b'{"n": 1}', judge=judged(),
                                                now=NOW + 1)
    again = await database.jobs.record_callback(job.id, provider="bfl", body=b'{"n": 1}', judge=judged(),
                                                now=NOW + 2)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert first.job.status == "submitted"  # as it was when recorded: not applied yet
    assert (await database.jobs.get_job(job.id)).callback_count == 2
    assert await database.jobs.pending_callbacks() == 1

    [applied] = await apply(database)
    assert await apply(database) == []

    assert applied.refused is None and applied.callback.received_at == NOW + 1
    stored = await database.jobs.get_job(job.id)
    assert stored.status == "running" and stored.output_urls == (URL,)
    # What the apply says it wrote (and put in the event's snapshot) is the row as stored.
    assert (applied.recorded.job.state, applied.recorded.job.updated_at, applied.recorded.job.ready_at) == (
        stored.state, stored.updated_at, stored.ready_at)
    assert await database.jobs.pending_callbacks() == 0
    events = await database.events.list_events(after=0, job_id=job.id, types=("job.running",))
    assert len(events) == 1


async def sent_job(database: Any) -> JobRecord:
    """A submitted job whose submit task is done, as the worker leaves it: no task due."""
    job = await submitted_job(database)
    for task in await database.tasks.get_tasks(job.id):
        await database.tasks.finish_task(task.id)
    return job


async def test_applying_leases_the_download_it_makes_due_for_this_processes_worker(database):
    job = await sent_job(database)
    await database.jobs.record_callback(job.id, provider="bfl", body=b"{}", judge=judged(), now=NOW + 1)

    applied = await database.jobs.apply_callbacks(
        interpret=ready, now=NOW + 5, limit=10, schedule=Schedule(fetch_at=NOW + 5),
        lease=TaskLease(until=NOW + 60_000, limit=4))

    [task] = applied.leased
    assert (task.kind, task.job_id, task.attempts, task.lease_until) == ("fetch", job.id, 1, NOW + 60_000)
    assert task.job is not None and task.job.output_urls == (URL,)  # the job as this applied it
    assert applied.work_due is False  # nothing else of this job's due now
    assert await database.tasks.claim_due_tasks(now=NOW + 6, limit=10, lease_ms=1000) == []


async def test_without_a_lease_the_download_is_left_due_and_the_result_says_so(database):
    job = await sent_job(database)
    await database.jobs.record_callback(job.id, provider="bfl", body=b"{}", judge=judged(), now=NOW + 1)

    applied = await database.jobs.apply_callbacks(
        interpret=ready, now=NOW + 5, limit=10, schedule=Schedule(fetch_at=NOW + 5))

    assert applied.leased == () and applied.work_due is True
    [claimed] = await database.tasks.claim_due_tasks(now=NOW + 6, limit=10, lease_ms=1000)
    assert claimed.kind == "fetch" and claimed.job_id == job.id


async def test_applying_says_whether_it_made_deliveries_to_send(database):
    quiet, watched = await submitted_job(database, 1), await submitted_job(database, 2)
    await database.jobs.record_callback(quiet.id, provider="bfl", body=b"{}", judge=judged(), now=NOW + 1)
    nobody_listens = await apply_with_result(database, now=NOW + 2)

    await database.subscriptions.create_subscription(SubscriptionRecord(
        id="sub_1", url="https://receiver.example.com/hook", events=("job.running",), description=None,
        secret="whsec_" + "A" * 32, previous_secret=None, previous_secret_until=None, status="enabled",
        disabled_reason=None, failing_since=None, created_at=NOW + 3, updated_at=NOW + 3))
    await database.jobs.record_callback(watched.id, provider="bfl", body=b"{}", judge=judged(), now=NOW + 4)
    listened_to = await apply_with_result(database, now=NOW + 5)

    assert nobody_listens.deliveries_made is False
    assert listened_to.deliveries_made is True  # its job.running, which sub_1 wants


async def apply_with_result(database: Any, *, now: int) -> Any:
    return await database.jobs.apply_callbacks(interpret=ready, now=now, limit=10,
                                               schedule=Schedule(fetch_at=now))


async def test_a_callback_refused_when_applied_changes_nothing_and_leaves_the_inbox(database):
    job = await submitted_job(database)
    await database.jobs.record_callback(job.id, provider="bfl", body=b"{}", judge=judged(), now=NOW + 1)

    def refuse(callback: InboxCallback, current: JobRecord, attempts: list[Any]) -> Judgement:
        raise CallbackRejected("callback is about another job than its token names", code="wrong_job")

    [applied] = await apply(database, refuse)

    assert isinstance(applied.refused, CallbackRejected) and applied.recorded is None
    assert (await database.jobs.get_job(job.id)).state == job.state
    assert await database.jobs.pending_callbacks() == 0


async def test_applying_one_jobs_callbacks_leaves_the_others_waiting(database):
    mine, other = await submitted_job(database, 1), await submitted_job(database, 2)
    for job in (mine, other):
        await database.jobs.record_callback(job.id, provider="bfl", body=b"{}", judge=judged(), now=NOW + 1)

    [applied] = await apply(database, job_id=mine.id)

    assert applied.callback.job_id == mine.id
    assert (await database.jobs.get_job(other.id)).status == "submitted"
    assert await database.jobs.pending_callbacks() == 1


async def test_applying_commits_without_waiting_for_the_disk_and_every_other_write_still_waits(database):
    # What the commit waits for, read inside each transaction: SQLite's synchronous (1 NORMAL,
    # 2 FULL), PostgreSQL's synchronous_commit.
    sql = "PRAGMA synchronous" if database.dialect.name == "sqlite" else "SHOW synchronous_commit"

    def setting(conn: Any) -> str:
        return str(conn.execute(sql).fetchone()[0])

    default = await database.query(setting)
    relaxed = await database.transact(setting, durable=False)
    after = await database.transact(setting)

    assert relaxed == ("1" if database.dialect.name == "sqlite" else "off")
    assert after == default  # the tests' PostgreSQL server runs with synchronous_commit off
    if database.dialect.name == "sqlite":
        assert default == "2"
