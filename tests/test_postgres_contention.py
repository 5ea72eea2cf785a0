"""Deliveries on PostgreSQL: the notifier's writes stay out of other transactions' way, so
neither they nor those transactions wait or run again (each of which costs a job's
notification milliseconds when web and worker are separate processes)."""

from __future__ import annotations

import anyio
import psycopg
import pytest

from service.rules import JOB_RULES
from storage.postgres.database import Database
from storage.records import AttemptResult
from storage.sql.group import GroupCommit

pytestmark = pytest.mark.anyio

NOW = 1_000_000


@pytest.fixture
async def db(postgres_url):
    # One try each: a transaction that fails to serialize fails the test instead of running again.
    database = await Database.open(postgres_url, pool_size=2, rules=JOB_RULES, attempts=1)

    def setup(conn):
        conn.execute(
            "INSERT INTO subscriptions (id, url, secret, status, created_at, updated_at) "
            "VALUES ('sub_1', 'https://example.com/hook', 'whsec_x', 'enabled', 0, 0)")
        seq = conn.execute("INSERT INTO events (id, type, body, created_at) "
                           "VALUES ('evt_1', 'job.succeeded', ?, 0) RETURNING seq", (b"{}",)).fetchone()[0]
        for name, due in (("dlv_x", NOW - 2), ("dlv_y", NOW - 1)):
            conn.execute(
                "INSERT INTO deliveries (id, event_seq, subscription_id, url, status, next_attempt_at, "
                "created_at) VALUES (?, ?, 'sub_1', 'https://example.com/hook', 'pending', ?, 0)",
                (name, seq, due))

    await database.transact(setup, appends_events=True)
    yield database
    await database.close()


async def claim(db: Database, limit: int = 1):
    return await db.deliveries.claim_due_deliveries(now=NOW, limit=limit, lease_ms=60_000, busy={},
                                                    per_destination=10)


async def test_a_claim_overlapping_one_that_read_what_it_leases_lets_that_one_commit(db, postgres_url):
    """Another transaction reads delivery x, the notifier claims x (looking at y too), then
    that transaction writes y. Serializable, the claim would make it fail (it read x before
    the lease, the claim read y before its write: a cycle). The claim leases only rows it has
    locked and needs no serializable snapshot, so both commit on their first try."""
    with psycopg.connect(postgres_url, autocommit=True) as other:
        with other.transaction():
            other.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            other.execute("SELECT status FROM deliveries WHERE id = 'dlv_x'").fetchone()
            [leased] = await claim(db)
            other.execute("UPDATE deliveries SET last_error = 'looked at' WHERE id = 'dlv_y'")
    assert leased.id == "dlv_x"
    rows = await db.query(lambda conn: conn.execute(
        "SELECT id, lease_until, last_error FROM deliveries ORDER BY id").fetchall())
    assert [tuple(r) for r in rows] == [("dlv_x", NOW + 60_000, None), ("dlv_y", 0, "looked at")]


async def test_a_delivery_to_a_healthy_subscription_leaves_its_row_alone(db, postgres_url):
    """Recording a delivered attempt to a subscription that is not failing does not write the
    subscription's row: it does not wait for a transaction holding that row, and overlapping
    deliveries to one subscription do not conflict."""
    [delivery] = await claim(db)
    result = AttemptResult(True, NOW, 3, 200, "ok", None, None)
    with psycopg.connect(postgres_url, autocommit=True) as holder, psycopg.connect(
        postgres_url, autocommit=True
    ) as watch:
        holder.execute("BEGIN")
        holder.execute("SELECT * FROM subscriptions WHERE id = 'sub_1' FOR UPDATE")
        waited = False
        async with anyio.create_task_group() as tg:
            done = anyio.Event()

            async def record() -> None:
                await db.deliveries.record_delivery_attempt(delivery, result, now=NOW, disable_after_ms=1)
                done.set()

            tg.start_soon(record)
            with anyio.fail_after(30):
                while not done.is_set():
                    if watch.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0]:
                        waited = True
                        holder.execute("ROLLBACK")  # let it go on, so the test ends
                        break
                    await anyio.sleep(0.02)
        if not waited:
            holder.execute("ROLLBACK")
    assert not waited
    status = await db.query(lambda conn: conn.execute(
        "SELECT d.status, s.failing_since FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id "
        "WHERE d.id = ?", (delivery.id,)).fetchone())
    assert tuple(status) == ("delivered", None)


async def test_a_write_grouped_while_the_applier_reads_what_it_writes_lets_both_commit(postgres_url):
    """The applier reads the inbox, a grouped write (a callback recorded) reads a job and adds
    to the inbox, then the applier writes that job. Serializable, the grouped write would make
    the applier fail (each read what the other wrote before it: a cycle), and under load
    every applier's batch ran again and again; the group commit needs no serializable
    snapshot, so both commit on their first try."""
    database = await Database.open(postgres_url, pool_size=2, rules=JOB_RULES, attempts=1)
    try:
        def setup(conn):
            conn.execute("CREATE TABLE job (id TEXT PRIMARY KEY, status TEXT, count BIGINT)")
            conn.execute("CREATE TABLE box (id BIGINT PRIMARY KEY)")
            conn.executemany("INSERT INTO job VALUES (?, 'running', 0)", [("j",), ("k",)])

        await database.transact(setup)

        def record(conn):
            status = conn.execute("SELECT status FROM job WHERE id = 'j'").fetchone()[0]
            conn.execute("UPDATE job SET count = count + 1 WHERE id = 'k'")  # another job's callback
            conn.execute("INSERT INTO box VALUES (1)")
            return status

        with psycopg.connect(postgres_url, autocommit=True) as applier:
            with applier.transaction():
                applier.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                assert applier.execute("SELECT count(*) FROM box").fetchone()[0] == 0
                assert await GroupCommit(database).run(record) == "running"
                applier.execute("UPDATE job SET status = 'succeeded' WHERE id = 'j'")
        rows = await database.query(lambda conn: conn.execute("SELECT * FROM job ORDER BY id").fetchall())
        assert [tuple(r) for r in rows] == [("j", "succeeded", 0), ("k", "running", 1)]
    finally:
        await database.close()
