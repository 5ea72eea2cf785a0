"""The store's transactions: one hop into aiosqlite's thread, all or nothing, serialised."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import aiosqlite
import anyio
import pytest

from service.errors import CallbackRejected
from service.ids import new_job_id, new_webhook_secret
from service.jobs import Submitted
from service.rules import JOB_RULES
from storage.errors import StorageUnavailable, UnknownJob
from storage.records import JobRecord, Judgement, NewJob
from storage.sqlite.database import Database
from storage.sqlite.thread import check_supported, run_in_connection_thread

pytestmark = pytest.mark.anyio

NOW = 1_790_000_000_000


@pytest.fixture
def store(database: Database) -> Database:
    return database  # every backend (tests/conftest.py BACKENDS)


async def submitted_job(store: Database, n: int = 0) -> JobRecord:
    new = NewJob(new_job_id(NOW + n), "bfl", "flux-pro-1.1", {"prompt": f"fox {n}"}, {},
                 new_webhook_secret(), None, None, NOW + 900_000)
    await store.jobs.create_job(new, now=NOW)
    recorded = await store.jobs.record_observation(new.id, Submitted(f"task-{n}"), now=NOW)
    assert recorded is not None
    return recorded.job


def count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608


async def test_a_function_runs_in_the_connection_thread_with_its_sqlite_connection(tmp_path: Path):
    loop_thread = threading.get_ident()
    async with aiosqlite.connect(tmp_path / "plain.db", isolation_level=None) as db:
        check_supported(db)

        def body(conn: sqlite3.Connection) -> tuple[int, int]:
            # sqlite3 refuses a connection used outside the thread that made it, so this
            # statement succeeding is itself the proof that we are in aiosqlite's thread.
            conn.execute("CREATE TABLE t (x INTEGER)")
            conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
            return threading.get_ident(), conn.execute("SELECT SUM(x) FROM t").fetchone()[0]

        thread, total = await run_in_connection_thread(db, body)
        assert thread != loop_thread
        assert total == 6
        # The same connection, as aiosqlite's own methods see it.
        assert await db.execute_fetchall("SELECT COUNT(*) FROM t") == [(3,)]


async def test_what_the_function_raises_is_raised_to_the_caller(tmp_path: Path):
    async with aiosqlite.connect(tmp_path / "plain.db") as db:

        def body(conn: sqlite3.Connection) -> None:
            raise LookupError("from the thread")

        with pytest.raises(LookupError, match="from the thread"):
            await run_in_connection_thread(db, body)
        assert await run_in_connection_thread(db, lambda conn: conn.execute("SELECT 7").fetchone()[0]) == 7


def test_a_connection_without_the_private_hooks_is_refused_loudly():
    class NotAiosqlite:  # what a future aiosqlite without _execute/_conn would look like
        pass

    with pytest.raises(RuntimeError, match=r"Connection\._execute"):
        check_supported(NotAiosqlite())  # type: ignore[arg-type]


async def test_store_refuses_to_open_on_an_aiosqlite_without_the_hooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Stands in for an aiosqlite release that renamed the private method the store relies on.
    monkeypatch.delattr(aiosqlite.Connection, "_execute")
    with pytest.raises(RuntimeError, match=r"storage/sqlite/thread\.py"):
        await Database.open(tmp_path / "fluxhook.db", rules=JOB_RULES)


async def test_a_transaction_that_raises_writes_nothing(store: Database):
    job = await submitted_job(store)

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE jobs SET poll_count = 99 WHERE id = ?", (job.id,))
        conn.execute("DELETE FROM tasks")
        raise LookupError("changed my mind")

    with pytest.raises(LookupError):
        await store.transact(half_done)
    after = await store.jobs.get_job(job.id)
    assert after is not None and after.poll_count == 0
    assert await store.tasks.get_tasks(job.id) != []
    # The connection is left outside any transaction: the next write opens its own.
    await store.tasks.retry_task((await store.tasks.get_tasks(job.id))[0].id, due_at=NOW, error="x")


async def test_a_database_error_inside_a_transaction_rolls_back_as_store_unavailable(store: Database):
    job = await submitted_job(store)

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE jobs SET poll_count = 5 WHERE id = ?", (job.id,))
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(StorageUnavailable, match="no_such_table"):
        await store.transact(broken)
    with pytest.raises(StorageUnavailable, match="database read failed"):
        await store.query(lambda conn: conn.execute("SELECT * FROM no_such_table").fetchall())
    after = await store.jobs.get_job(job.id)
    assert after is not None and after.poll_count == 0


async def test_a_refused_callback_changes_nothing(store: Database):
    job = await submitted_job(store)
    before = await store.query(lambda conn: (count(conn, "callbacks"), count(conn, "events")))

    def judge(seen: JobRecord, attempts: list) -> Judgement:
        assert seen.id == job.id
        raise CallbackRejected("signature does not match", code="bad_signature", status_code=401)

    with pytest.raises(CallbackRejected):
        await store.jobs.record_callback(job.id, provider="bfl", body=b"{}", judge=judge, now=NOW)
    after = await store.jobs.get_job(job.id)
    assert after == job
    assert await store.query(lambda conn: (count(conn, "callbacks"), count(conn, "events"))) == before
    assert await store.jobs.pending_callbacks() == 0


async def test_a_callback_for_no_job_is_rejected_without_judging(store: Database):
    def judge(job: JobRecord, attempts: list) -> Judgement:
        raise AssertionError("judged a job that does not exist")

    with pytest.raises(UnknownJob) as caught:  # service/callbacks.py makes it a 403 unknown_job
        await store.jobs.record_callback("job_missing", provider="bfl", body=b"{}", judge=judge, now=NOW)
    assert caught.value.job_id == "job_missing"


async def test_concurrent_transactions_each_commit_whole(store: Database):
    jobs = [await submitted_job(store, n) for n in range(20)]

    async def count_a_poll(job: JobRecord) -> None:
        for _ in range(5):
            await store.jobs.record_observation(job.id, Submitted(job.provider_job_id or ""), now=NOW,
                                           counted_poll=True)

    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(count_a_poll, job)
    for job in jobs:
        after = await store.jobs.get_job(job.id)
        assert after is not None and after.poll_count == 5


async def test_a_cancelled_caller_still_commits_the_write_it_started_whole(store: Database):
    job = await submitted_job(store)
    started, release = threading.Event(), threading.Event()

    def slow_write(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE jobs SET poll_count = poll_count + 1 WHERE id = ?", (job.id,))
        started.set()
        release.wait(10)
        conn.execute("UPDATE jobs SET callback_count = callback_count + 1 WHERE id = ?", (job.id,))

    async with anyio.create_task_group() as tg:
        tg.start_soon(store.transact, slow_write)
        await anyio.to_thread.run_sync(started.wait, 10)
        tg.cancel_scope.cancel()  # while the transaction is half done in the database thread
        release.set()
    after = await store.jobs.get_job(job.id)
    assert after is not None
    assert (after.poll_count, after.callback_count) == (1, 1)
    # The lock was held until the thread was done: the next write opens its own transaction.
    await store.tasks.finish_task((await store.tasks.get_tasks(job.id))[0].id)
    assert await store.tasks.get_tasks(job.id) == []
