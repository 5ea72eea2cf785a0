"""Claiming work within the providers' caps on active jobs, with real SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from service.catalog import Catalog
from service.ids import new_job_id, new_webhook_secret
from service.jobs import Cancelled, ProviderFailed, ProviderSucceeded, Source, Submitted
from service.rules import JOB_RULES
from service.settings import Settings
from service.worker import submit_caps
from storage.records import Attempt, JobRecord, NewJob, Schedule, SubmitCaps, TaskOutcome, TaskRecord
from storage.sqlite.database import Database, _statements
from storage.sqlite.migrations import MIGRATIONS

pytestmark = pytest.mark.anyio

NOW = 1_790_000_000_000
LEASE_MS = 120_000
BFL_4 = SubmitCaps({"bfl": 4, "cometapi": None})


@pytest.fixture
def store(database: Database) -> Database:
    return database  # every backend (tests/conftest.py BACKENDS)


async def queued(store: Database, n: int, *, provider: str = "bfl", model: str = "flux-pro-1.1",
                 candidates: tuple[str, ...] = ()) -> JobRecord:
    """A job created `n` ms after NOW (so creation order is n's order), its submit due then."""
    new = NewJob(new_job_id(NOW + n), provider, model, {"prompt": f"fox {n}"}, {},
                 new_webhook_secret(), None, None, NOW + 900_000, candidates=candidates)
    job, _ = await store.jobs.create_job(new, now=NOW + n)
    return job


async def claim(store: Database, caps: SubmitCaps = BFL_4, *, limit: int = 16, now: int = NOW + 1000,
                ) -> list[TaskRecord]:
    return await store.tasks.claim_due_tasks(now=now, limit=limit, lease_ms=LEASE_MS, caps=caps)


async def accept(store: Database, task: TaskRecord, *, now: int = NOW + 1000) -> None:
    """The provider took the submit: the job is now active there, awaiting its final word."""
    pid = f"p-{task.job_id}"
    await store.jobs.record_submit(task.job_id, Attempt("bfl", "accepted", 200, None, pid), now=now,
                              task=TaskOutcome(task.id), observation=Submitted(pid),
                              schedule=Schedule(poll_at=now + 15_000))


async def test_a_capped_provider_gets_at_most_its_cap_of_submits_oldest_first(store: Database):
    jobs = [await queued(store, n) for n in range(7)]
    first = await claim(store)
    assert [t.job_id for t in first] == [j.id for j in jobs[:4]]
    assert await claim(store) == []  # the claimed submits hold every place
    for task in first:
        await accept(store, task)
    assert await claim(store) == []  # and so do the jobs the provider is working on
    assert await store.tasks.count_active("bfl", now=NOW + 1000) == 4


async def test_a_job_reaching_its_final_word_frees_a_place_for_the_next_in_order(store: Database):
    jobs = [await queued(store, n) for n in range(7)]
    first = await claim(store)
    for task in first:
        await accept(store, task)
    # Ready (its images still to fetch) is the provider's final word, as is a failure.
    await store.jobs.record_observation(jobs[1].id, ProviderSucceeded(Source.CALLBACK, ("https://x/1.png",)),
                                   now=NOW + 2000, schedule=Schedule(fetch_at=NOW + 2000))
    await store.jobs.record_observation(jobs[3].id, ProviderFailed(Source.POLL, "provider_error", "boom"),
                                   now=NOW + 2000)
    second = await claim(store, now=NOW + 2000)
    submits = [t.job_id for t in second if t.kind == "submit"]
    assert submits == [jobs[4].id, jobs[5].id]
    assert [t.kind for t in second if t.job_id == jobs[1].id] == ["fetch"]


async def test_a_submit_retried_after_a_429_gives_its_place_back(store: Database):
    jobs = [await queued(store, n) for n in range(5)]
    first = await claim(store)
    await store.jobs.record_submit(first[0].job_id, Attempt("bfl", "unavailable", 429, "slow down"),
                              now=NOW + 1000, task=TaskOutcome(first[0].id, retry_at=NOW + 3000))
    [next_one] = await claim(store)
    assert next_one.job_id == jobs[4].id
    assert await claim(store, now=NOW + 3000) == []  # the retry waits for a place like the rest


async def test_next_due_ignores_submits_that_have_no_place(store: Database):
    for n in range(6):
        await queued(store, n)
    for task in await claim(store):
        await accept(store, task)  # four jobs active at BFL; their polls are due at NOW + 16 s
    assert await store.tasks.next_due_at(now=NOW + 1000, caps=BFL_4) == NOW + 16_000
    # Without the cap the two waiting submits are due at once.
    assert await store.tasks.next_due_at(now=NOW + 1000, caps=SubmitCaps()) == NOW + 4


async def test_next_due_is_when_a_claimed_submits_lease_runs_out(store: Database):
    for n in range(5):
        await queued(store, n)
    await claim(store)  # four submits leased (say, by a worker that then crashed)
    assert await store.tasks.next_due_at(now=NOW + 1000, caps=BFL_4) == NOW + 1000 + LEASE_MS
    again = await claim(store, now=NOW + 1000 + LEASE_MS)
    assert len(again) == 4  # the lapsed leases are claimable again, still within the cap


async def test_uncapped_providers_and_other_work_are_not_held_back(store: Database):
    for n in range(5):
        await queued(store, n)
    comet = [await queued(store, 10 + n, provider="cometapi") for n in range(6)]
    claimed = await claim(store)
    assert sum(t.job_id in {j.id for j in comet} for t in claimed) == 6
    assert len(claimed) == 10


def test_caps_come_from_the_settings_and_the_catalog(make_settings: Callable[..., Settings]):
    caps = submit_caps(make_settings(COMETAPI_API_KEY="k"), Catalog.default())
    assert caps.providers == {"bfl": 24, "cometapi": None}  # BFL documents 24; CometAPI nothing
    assert caps.models == {("bfl", "flux-kontext-max"): 6}
    low = submit_caps(make_settings(BFL_MAX_ACTIVE_TASKS="4"), Catalog.default())
    assert low.models == {("bfl", "flux-kontext-max"): 4}
    off = submit_caps(make_settings(BFL_MAX_ACTIVE_TASKS="0"), Catalog.default())
    assert off == SubmitCaps({"bfl": None}, {})


async def test_a_full_model_cap_lets_other_models_of_the_provider_through(
    store: Database, bfl_caps: Callable[[int], SubmitCaps]
):
    caps = bfl_caps(24)
    assert caps.models[("bfl", "flux-kontext-max")] == 6
    kontext = [await queued(store, n, model="flux-kontext-max") for n in range(8)]
    pro = await queued(store, 100)
    claimed = await claim(store, caps)
    assert [t.job_id for t in claimed] == [j.id for j in kontext[:6]] + [pro.id]
    assert await store.tasks.next_due_at(now=NOW + 1000, caps=caps) == NOW + 1000 + LEASE_MS


async def test_an_auto_job_overflows_to_the_next_candidate_with_a_place(store: Database):
    caps = SubmitCaps({"bfl": 1, "cometapi": 1, "apiframe": None})
    both = ("bfl", "cometapi", "apiframe")
    first = await queued(store, 0, candidates=both)
    fixed = await queued(store, 1, candidates=("bfl",))
    auto = [await queued(store, 2 + n, candidates=both) for n in range(2)]
    claimed = await claim(store, caps)
    assert [t.job_id for t in claimed] == [first.id, auto[0].id, auto[1].id]
    moved = [await store.jobs.get_job(j.id) for j in auto]
    assert [j.provider for j in moved if j] == ["cometapi", "apiframe"]
    assert (await store.jobs.get_job(fixed.id)).provider == "bfl"  # type: ignore[union-attr]
    assert await store.tasks.count_active("cometapi", now=NOW + 1000) == 1
    assert await claim(store, caps) == []  # `fixed` can only wait for BFL


async def test_a_job_does_not_overflow_to_a_provider_no_longer_configured(store: Database):
    await queued(store, 0)
    late = await queued(store, 1, candidates=("bfl", "runcomfy"))
    claimed = await claim(store, SubmitCaps({"bfl": 1}))
    assert late.id not in [t.job_id for t in claimed]


async def test_a_failed_over_submit_waits_for_a_place_at_its_new_provider(store: Database):
    caps = SubmitCaps({"bfl": None, "cometapi": 1})
    await queued(store, 0, provider="cometapi")
    job = await queued(store, 1, candidates=("bfl", "cometapi"))
    [busy, mine] = await claim(store, caps)
    await store.jobs.record_submit(job.id, Attempt("bfl", "failed_over", 503, "down"), now=NOW + 1000,
                              task=TaskOutcome(mine.id, retry_at=NOW + 1000), switch_to="cometapi")
    assert await claim(store, caps) == []  # CometAPI's one place is taken
    await store.jobs.record_observation(busy.job_id, Cancelled(), now=NOW + 1000)
    [again] = await claim(store, caps)
    assert again.job_id == job.id


async def test_a_job_cancelled_while_waiting_is_claimed_despite_a_full_provider(store: Database):
    jobs = [await queued(store, n) for n in range(2)]
    await claim(store, SubmitCaps({"bfl": 1}))
    await store.jobs.record_observation(jobs[1].id, Cancelled(), now=NOW + 1000)
    [task] = await claim(store, SubmitCaps({"bfl": 1}))
    assert task.job_id == jobs[1].id  # the submitter just ends it


@pytest.mark.sqlite_only  # SQLite's EXPLAIN QUERY PLAN; PostgreSQL's twin follows
async def test_claiming_reads_only_index_ranges(store: Database):
    for n in range(3):
        await queued(store, n, candidates=("bfl", "cometapi"))
    await queued(store, 9, model="flux-kontext-max")
    statements: list[str] = []
    await store._db.set_trace_callback(statements.append)  # the store's own connection
    try:
        # BFL fills up and one job overflows to CometAPI; then BFL has room again.
        await claim(store, SubmitCaps({"bfl": 2, "cometapi": None}, {("bfl", "flux-kontext-max"): 1}))
        await store.tasks.next_due_at(now=NOW + 1000, caps=SubmitCaps({"bfl": 10}))
    finally:
        await store._db.set_trace_callback(None)
    queries = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "UPDATE"))]
    assert any(s.startswith("UPDATE jobs SET provider") for s in queries)  # the overflow
    assert len(queries) >= 12
    plans = await store.query(lambda conn: [
        (s, [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {s}")]) for s in queries
    ])
    # No query reads a whole table or index, nor sorts a range to find its first rows.
    scans = [(s, plan) for s, plan in plans
             if any(step.startswith(("SCAN", "USE TEMP B-TREE FOR ORDER BY")) for step in plan)]
    assert scans == []


async def test_on_postgres_claiming_reads_tables_through_their_indexes(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    from storage.postgres.connection import Connection
    from storage.postgres.database import Database as PostgresDatabase

    store = await PostgresDatabase.open(postgres_url, pool_size=2, rules=JOB_RULES)
    try:
        for n in range(3):
            await queued(store, n, candidates=("bfl", "cometapi"))  # type: ignore[arg-type]
        await queued(store, 9, model="flux-kontext-max")  # type: ignore[arg-type]
        statements: list[tuple[str, tuple]] = []
        execute = Connection.execute

        def recording(self: Connection, sql: str, params: tuple = ()) -> object:
            statements.append((sql, tuple(params)))
            return execute(self, sql, params)

        monkeypatch.setattr(Connection, "execute", recording)
        await claim(store, SubmitCaps({"bfl": 2, "cometapi": None}, {("bfl", "flux-kontext-max"): 1}))  # type: ignore[arg-type]
        await store.tasks.next_due_at(now=NOW + 1000, caps=SubmitCaps({"bfl": 10}))
        monkeypatch.undo()
        queries = [(s, p) for s, p in statements if s.lstrip().upper().startswith(("SELECT", "UPDATE"))]
        assert any(s.startswith("UPDATE jobs SET provider") for s, _ in queries)  # the overflow
        assert len(queries) >= 12

        def explain(conn: Connection) -> list[tuple[str, list[str]]]:
            # With sequential scans priced out, a plan that still has one has no index to use.
            conn.execute("SET LOCAL enable_seqscan = off")
            return [(s, [row[0] for row in conn.execute(f"EXPLAIN {s}", p)]) for s, p in queries]

        plans = await store.transact(explain)
        scans = [(s, plan) for s, plan in plans if any("Seq Scan" in step for step in plan)]
        assert scans == []
    finally:
        await store.close()


async def test_migration_gives_existing_submit_tasks_their_jobs_provider(tmp_path: Path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        for script in MIGRATIONS[:3]:
            for statement in _statements(script):
                conn.execute(statement)
        conn.execute("PRAGMA user_version=3")
        conn.execute("""INSERT INTO jobs (id, provider, model, status, input, metadata, created_at,
                        updated_at, deadline_at) VALUES ('j1', 'cometapi', 'flux-pro-1.1', 'queued',
                        '{}', '{}', 1, 1, 2)""")
        conn.execute("INSERT INTO tasks (job_id, kind, due_at, created_at) VALUES ('j1', 'submit', 1, 1)")
    store = await Database.open(path, rules=JOB_RULES)
    try:
        # It waits under CometAPI's cap, not BFL's: it carries CometAPI's name.
        assert await claim(store, SubmitCaps({"cometapi": 0})) == []
        assert len(await claim(store, SubmitCaps({"bfl": 0}))) == 1
    finally:
        await store.close()


@pytest.fixture
def bfl_caps(make_settings: Callable[..., Settings]) -> Callable[[int], SubmitCaps]:
    """The caps the worker derives from the settings (BFL_MAX_ACTIVE_TASKS) and the catalog."""
    return lambda cap: submit_caps(make_settings(BFL_MAX_ACTIVE_TASKS=str(cap)), Catalog.default())


async def lose_the_answer(store: Database, task: TaskRecord, *, now: int = NOW + 1000) -> None:
    """The submit went out and its answer never came (service/adoption.py): the job stays queued
    and its submit waits, unleased, for the adopt window."""
    attempt_id = await store.jobs.begin_submit(task.job_id, "bfl", now=now)
    await store.jobs.record_submit(task.job_id, Attempt("bfl", "unknown", None, "timed out"), now=now,
                              task=TaskOutcome(task.id, retry_at=now + 180_000, error="unknown"),
                              attempt_id=attempt_id)


async def test_a_submit_whose_answer_was_lost_keeps_its_place_at_the_provider(store: Database):
    jobs = [await queued(store, n) for n in range(6)]
    first = await claim(store)
    assert len(first) == 4
    await lose_the_answer(store, first[0])
    for task in first[1:]:
        await accept(store, task)

    # Its task may be running at the provider: the place stays taken while the job waits.
    assert await claim(store, now=NOW + 2000) == []
    assert await store.tasks.count_active("bfl", now=NOW + 2000) == 4
    assert {j.id for j in jobs[4:]}.isdisjoint({t.job_id for t in await claim(store, now=NOW + 3000)})


async def test_a_submit_whose_answer_was_lost_is_sent_again_in_its_own_place_never_elsewhere(store: Database):
    both = ("bfl", "cometapi")
    caps = SubmitCaps({"bfl": 1, "cometapi": 4})
    lost = await queued(store, 0, candidates=both)
    [task] = await claim(store, caps)
    await lose_the_answer(store, task)
    other = await queued(store, 1, candidates=("bfl",))
    assert await claim(store, caps, now=NOW + 2000) == []  # bfl's one place is the lost job's

    # Its window over, the lost job is due again: it goes out in the place it holds, at bfl,
    # not to cometapi (its first task may be running at bfl), and the other job still waits.
    [again] = await claim(store, caps, now=NOW + 181_500)
    assert again.job_id == lost.id
    assert (await store.jobs.get_job(lost.id)).provider == "bfl"
    assert await store.tasks.count_active("bfl", now=NOW + 181_500) == 1
    assert other.id not in {t.job_id for t in await claim(store, caps, now=NOW + 181_600)}


# One job's claim: what a serverless request does for the job it is about (service/inline.py) --


async def claim_job(store: Database, job: JobRecord, caps: SubmitCaps = BFL_4, *, now: int = NOW + 1000,
                    ) -> list[TaskRecord]:
    return await store.tasks.claim_job_tasks(job.id, now=now, limit=16, lease_ms=LEASE_MS, caps=caps)


async def test_a_jobs_own_claim_leases_only_that_jobs_due_tasks(store: Database):
    mine, other = await queued(store, 1), await queued(store, 2)
    [task] = await claim_job(store, mine)
    assert (task.job_id, task.kind, task.attempts) == (mine.id, "submit", 1)  # counted, as any claim
    [left] = await claim(store)
    assert left.job_id == other.id  # the other job's submit was not touched
    assert await store.tasks.count_due(now=NOW + 1000) == {}


async def test_a_task_another_claim_holds_is_not_claimed_again_by_the_jobs_own(store: Database):
    job = await queued(store, 1)
    [held] = await claim(store)  # a tick (or another instance) took it first
    assert await claim_job(store, job) == []
    await store.tasks.release_tasks([(held.id, held.lease_until)])
    assert [t.id for t in await claim_job(store, job)] == [held.id]  # handed back: due again
    assert await claim(store) == []  # and now the job's own claim holds it


async def test_a_jobs_own_claim_leaves_a_submit_over_its_providers_cap_waiting(store: Database):
    jobs = [await queued(store, n) for n in range(5)]
    assert len(await claim(store)) == 4  # bfl's 4 places are taken
    assert await claim_job(store, jobs[4]) == []
    assert await store.tasks.count_due(now=NOW + 1000) == {"submit": 1}  # still due, for a tick
    assert [t.job_id for t in await claim_job(store, jobs[4], SubmitCaps({"bfl": 5}))] == [jobs[4].id]


async def test_a_jobs_own_claim_takes_no_task_not_yet_due(store: Database):
    job = await queued(store, 1)
    [task] = await claim_job(store, job)
    await accept(store, task)  # its fallback poll is due 15 s later
    assert await claim_job(store, job) == []
    [poll] = await claim_job(store, job, now=NOW + 1000 + 15_000)
    assert poll.kind == "poll"


async def test_a_count_of_waiting_tasks_stops_at_most_and_without_it_counts_them_all(store: Database):
    """What a tick reports (up to a limit, so its cost does not grow with the backlog), and what
    /metrics reports (every one)."""
    for n in range(3):
        await queued(store, n)
    for n in range(3, 6):
        job = await queued(store, n)
        await store.jobs.record_observation(job.id, Submitted(f"task-{n}"), now=NOW + n,
                                            schedule=Schedule(poll_at=NOW + 60_000))
        for task in await store.tasks.get_tasks(job.id):
            if task.kind == "submit":  # as the worker leaves it once the submit is answered
                await store.tasks.finish_task(task.id)

    assert await store.tasks.count_tasks() == {"submit": 3, "poll": 3}
    assert await store.tasks.count_tasks(most=10) == {"submit": 3, "poll": 3}
    assert await store.tasks.count_tasks(most=2) == {"submit": 2, "poll": 2}
