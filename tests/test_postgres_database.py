"""The PostgreSQL database: transaction bodies in one hop, refusals, conflicts, unavailability."""

from __future__ import annotations

import random
import threading
from functools import partial

import anyio
import psycopg
import pytest

from service.rules import JOB_RULES
from storage.errors import StorageUnavailable
from storage.postgres.database import Database, Isolation

pytestmark = pytest.mark.anyio


class Refused(Exception):
    pass


@pytest.fixture
async def db(postgres_url):
    database = await Database.open(postgres_url, pool_size=4, rules=JOB_RULES)
    await database.transact(lambda conn: conn.execute(
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)"))
    yield database
    await database.close()


async def test_a_committed_body_is_seen_by_later_reads(db):
    await db.transact(lambda conn: conn.execute("INSERT INTO counters VALUES (?, ?)", ("a", 1)))
    row = await db.query(
        lambda conn: conn.execute("SELECT value FROM counters WHERE name = ?", ("a",)).fetchone())
    assert row is not None and row["value"] == 1


async def test_a_body_that_refuses_changes_nothing_and_its_refusal_is_raised_as_is(db):
    def refuse(conn):
        conn.execute("INSERT INTO counters VALUES (?, ?)", ("a", 1))
        raise Refused("no")

    with pytest.raises(Refused):
        await db.transact(refuse)
    assert await db.query(lambda conn: conn.execute("SELECT count(*) FROM counters").fetchone()[0]) == 0


async def test_a_database_error_becomes_storage_unavailable_and_rolls_back(db):
    def broken(conn):
        conn.execute("INSERT INTO counters VALUES (?, ?)", ("a", 1))
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(StorageUnavailable, match="no_such_table"):
        await db.transact(broken)
    assert await db.query(lambda conn: conn.execute("SELECT count(*) FROM counters").fetchone()[0]) == 0
    # the connection went back to the pool healthy: the next body runs
    await db.transact(lambda conn: conn.execute("INSERT INTO counters VALUES (?, ?)", ("b", 1)))


async def test_racing_read_then_write_bodies_both_count_as_one_writer_at_a_time_would(db):
    """Two bodies read a counter, then both hold their transaction open until the other has
    read too, then write read+1: one of them fails to serialize and is run again, so the
    counter ends at 2 (without SERIALIZABLE and the retry it would be 1)."""
    await db.transact(lambda conn: conn.execute("INSERT INTO counters VALUES ('n', 0)"))
    both_read = threading.Barrier(2)
    runs: list[int] = []

    def increment(conn):
        value = conn.execute("SELECT value FROM counters WHERE name = 'n'").fetchone()["value"]
        runs.append(value)
        if len(runs) <= 2:  # the first run of each waits for the other's read
            both_read.wait(timeout=10)
        conn.execute("UPDATE counters SET value = ? WHERE name = 'n'", (value + 1,))

    async with anyio.create_task_group() as tg:
        tg.start_soon(db.transact, increment)
        tg.start_soon(db.transact, increment)
    row = await db.query(lambda conn: conn.execute("SELECT value FROM counters WHERE name = 'n'").fetchone())
    assert row["value"] == 2
    assert runs == [0, 0, 1]  # the loser ran again and read the winner's write


async def test_read_committed_is_there_for_bodies_that_lock_rows_themselves(db):
    await db.transact(lambda conn: conn.execute("INSERT INTO counters VALUES ('n', 0)"))

    def level(conn):
        return conn.execute("SHOW transaction_isolation").fetchone()[0]

    assert await db.transact(level) == "serializable"
    assert await db.transact(level, isolation=Isolation.READ_COMMITTED) == "read committed"


async def test_an_unreachable_server_is_storage_unavailable_without_the_password(postgres_server):
    url = postgres_server.url_for("no_such_database").replace("postgres@", "postgres:hunter2-pw@")
    with pytest.raises(StorageUnavailable) as refused:
        await Database.open(url, pool_size=1, rules=JOB_RULES, timeout=1)
    assert "hunter2-pw" not in str(refused.value)
    assert "no_such_database" in str(refused.value)


async def test_transactions_wait_for_a_connection_when_all_are_busy(postgres_url):
    db = await Database.open(postgres_url, pool_size=2, rules=JOB_RULES)
    try:
        inside = threading.Semaphore(0)
        release = threading.Event()

        def hold(conn):
            conn.execute("SELECT 1")
            inside.release()
            release.wait(10)
            return conn.execute("SELECT pg_backend_pid()").fetchone()[0]

        pids = []

        async def run():
            pids.append(await db.transact(hold))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(run)
            for _ in range(2):
                await anyio.to_thread.run_sync(inside.acquire)
            release.set()
        assert len(pids) == 5
        assert len(set(pids)) <= 2  # five bodies, two connections
    finally:
        await db.close()


async def test_connections_the_server_dropped_are_replaced_without_failing_a_transaction(db, postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        dropped = admin.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = current_database() AND pid != pg_backend_pid()""").fetchall()
    assert len(dropped) == 4  # the whole pool
    for n in range(8):
        await db.transact(lambda conn, n=n: conn.execute("INSERT INTO counters VALUES (?, ?)", (f"c{n}", n)))
    assert await db.query(lambda conn: conn.execute("SELECT count(*) FROM counters").fetchone()[0]) == 8


async def test_two_claimers_skip_each_others_locked_rows(db):
    await db.transact(lambda conn: conn.executemany("INSERT INTO counters VALUES (?, 0)", [("a",), ("b",)]))
    both_chose = threading.Barrier(2)
    chosen: list[str] = []

    def claim(conn):
        row = conn.execute("SELECT name FROM counters WHERE value = 0 ORDER BY name LIMIT 1 "
                           "FOR UPDATE SKIP LOCKED").fetchone()
        chosen.append(row["name"])
        if len(chosen) <= 2:  # both hold their row until the other has chosen
            both_chose.wait(timeout=10)
        conn.execute("UPDATE counters SET value = 1 WHERE name = ?", (row["name"],))

    async with anyio.create_task_group() as tg:
        tg.start_soon(db.transact, claim)
        tg.start_soon(db.transact, claim)
    assert sorted(chosen[:2]) == ["a", "b"]
    rows = await db.query(
        lambda conn: conn.execute("SELECT name, value FROM counters ORDER BY name").fetchall())
    assert [tuple(r) for r in rows] == [("a", 1), ("b", 1)]


async def test_event_writers_in_two_processes_at_once_each_commit_on_their_first_try(postgres_url):
    """Two processes each write an event at the same moment. Each body reads, lets the other
    start (if it can), then appends: overlapping, the later would take the number after a last
    event older than the other's commit, and fail to serialize (with one try each, the write is
    lost). Declared as event writers, the second starts only once the first has committed:
    both commit first time, numbered in commit order."""
    processes = [await Database.open(postgres_url, pool_size=1, rules=JOB_RULES, attempts=1)
                 for _ in range(2)]
    started = [threading.Event(), threading.Event()]
    runs: list[str] = []

    def append(me: int, conn):
        # Its snapshot is taken here, once it holds the event log's lock. Only the answer's
        # arrival orders the two: the statements are pipelined, so a body may run ahead of them.
        conn.execute("SELECT count(*) FROM events").fetchone()
        runs.append(f"p{me}")
        started[me].set()
        started[1 - me].wait(timeout=1)  # the other starts now, unless it waits for this one
        conn.execute("INSERT INTO events (id, type, body, created_at) VALUES (?, 'test', '', 0)", (f"p{me}",))

    try:
        async with anyio.create_task_group() as tg:
            for me, db in enumerate(processes):
                tg.start_soon(partial(db.transact, partial(append, me), appends_events=True))
        rows = await processes[0].query(
            lambda conn: conn.execute("SELECT seq, id FROM events ORDER BY seq").fetchall())
    finally:
        for db in processes:
            await db.close()
    assert len(runs) == 2
    assert [(r["seq"], r["id"]) for r in rows] == [(1, runs[0]), (2, runs[1])]


async def test_event_appenders_that_overlap_queue_up_and_each_commits_on_its_first_run(db, postgres_url):
    """The second appender starts while the first is inside its transaction. Marked as
    appending events, it waits for the first to commit before taking its snapshot, so it sees
    the first's event and takes the next seq: neither runs twice. (Unmarked, it would read the
    log's last seq from a snapshot older than the first's commit, fail to serialize and run
    again, as ten workers submitting at once did, some of them ten times over.)"""
    runs: list[str] = []

    def append(name: str, wait_for_a_waiter: bool):
        def body(conn):
            runs.append(name)
            seq = conn.execute(
                "INSERT INTO events (id, type, body, created_at) VALUES (?, 'test', ?, 0) RETURNING seq",
                (f"evt_{name}_{len(runs)}", b"{}"),
            ).fetchone()[0]
            if wait_for_a_waiter:  # hold the transaction open until the other one queues behind it
                with psycopg.connect(postgres_url, autocommit=True) as watch:
                    for _ in range(200):
                        if watch.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0]:
                            break
                        threading.Event().wait(0.05)
            return seq

        return body

    seqs: dict[str, int] = {}

    async def run(name: str, wait_for_a_waiter: bool) -> None:
        seqs[name] = await db.transact(append(name, wait_for_a_waiter), appends_events=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "first", True)
        while not runs:
            await anyio.sleep(0.01)
        tg.start_soon(run, "second", False)
    assert runs == ["first", "second"]
    assert seqs == {"first": 1, "second": 2}


async def test_a_statement_failing_mid_body_leaves_no_broken_prepared_statement_behind(postgres_url):
    """Bodies run pipelined and their statements get prepared on the server once used often;
    a failure mid-body, or at COMMIT, must not leave a connection whose later bodies fail.
    The connection is kept (a pool of one: the same server process throughout)."""
    db = await Database.open(postgres_url, pool_size=1, rules=JOB_RULES)
    try:
        await db.transact(lambda conn: conn.execute(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, tag BIGINT UNIQUE DEFERRABLE INITIALLY DEFERRED)"))
        await db.transact(lambda conn: conn.execute("INSERT INTO t VALUES (-1, -1)"))
        statements = [f"SELECT count(*) FROM t WHERE id > ? + {k}" for k in range(4)] + [  # noqa: S608
            f"UPDATE t SET id = id WHERE id = ? + {k}" for k in range(4)]  # noqa: S608
        rng = random.Random(1)
        pids: set[int] = set()

        def body(failing: str, picks: list[int]):
            def run(conn):
                pids.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
                for n, pick in enumerate(picks):
                    cursor = conn.execute(statements[pick], (n,))
                    if n % 2:
                        cursor.fetchall()
                    if failing == "mid-body" and n == 1:
                        conn.execute("SELECT 1/0")  # its error comes back with a later result
                if failing == "at commit":  # a deferred unique constraint is checked by COMMIT
                    conn.execute("INSERT INTO t VALUES (?, -1)", (len(picks),))
            return run

        for _ in range(150):
            failing = rng.choice(["", "", "", "mid-body", "at commit"])
            picks = [rng.randrange(len(statements)) for _ in range(rng.randint(2, 6))]
            if failing:
                with pytest.raises(StorageUnavailable, match=r"division by zero|duplicate key"):
                    await db.transact(body(failing, picks))
            else:
                await db.transact(body(failing, picks))
        assert len(pids) == 1
    finally:
        await db.close()


async def test_a_body_whose_prepared_statements_a_migration_outdated_runs_again_and_succeeds(postgres_url):
    """A rolling deploy: another process's migration alters a table under statements this
    process's connection has prepared; its next body is refused once by the server ("cached
    plan must not change result type"), rolled back, and run again with them prepared anew."""
    db = await Database.open(postgres_url, pool_size=1, rules=JOB_RULES)
    try:
        await db.transact(lambda conn: conn.execute("CREATE TABLE t (id BIGINT PRIMARY KEY)"))
        runs: list[int] = []

        def body(conn):
            runs.append(1)
            conn.execute("INSERT INTO t (id) VALUES (?)", (len(runs),))
            return [len(row) for row in conn.execute("SELECT * FROM t WHERE id > ?", (0,))]

        assert [await db.transact(body) for _ in range(2)] == [[1], [1, 1]]  # prepared by now
        with psycopg.connect(postgres_url, autocommit=True) as other:
            other.execute("ALTER TABLE t ADD COLUMN added TEXT")
        assert await db.transact(body) == [2, 2, 2]  # the failed run's row was rolled back
        assert len(runs) == 4
        assert await db.query(lambda conn: [len(row) for row in conn.execute(
            "SELECT * FROM t WHERE id > ?", (0,))]) == [2, 2, 2]
    finally:
        await db.close()


async def test_transactions_that_fail_to_serialize_keep_their_connections_and_run_again(postgres_url):
    """Two bodies each read the row the other writes (write skew), round after round: one of
    each pair fails to serialize (while writing, or at COMMIT), is rolled back and runs again
    on a connection of the pool, not a new one, whose statements, prepared by then, still
    run."""
    db = await Database.open(postgres_url, pool_size=2, rules=JOB_RULES)
    try:
        await db.transact(lambda conn: conn.execute(
            "CREATE TABLE pair (name TEXT PRIMARY KEY, value BIGINT)"))
        await db.transact(lambda conn: conn.executemany("INSERT INTO pair VALUES (?, 0)", [("a",), ("b",)]))
        pids: set[int] = set()

        def skew(read: str, write: str, both_read: threading.Barrier, runs: list[str]):
            def body(conn):
                pids.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
                value = conn.execute("SELECT value FROM pair WHERE name = ?", (read,)).fetchone()["value"]
                runs.append(read)
                if len(runs) <= 2:  # each one's first run waits for the other's read
                    both_read.wait(timeout=10)
                conn.execute("UPDATE pair SET value = ? WHERE name = ?", (value + 1, write))
                conn.execute("SELECT count(*) FROM pair WHERE value > ?", (value,))
            return body

        for _ in range(12):
            both_read, runs = threading.Barrier(2), []
            async with anyio.create_task_group() as tg:
                tg.start_soon(db.transact, skew("a", "b", both_read, runs))
                tg.start_soon(db.transact, skew("b", "a", both_read, runs))
            assert len(runs) == 3  # one of the two ran again
        a, b = (row["value"] for row in await db.query(
            lambda conn: conn.execute("SELECT value FROM pair ORDER BY name").fetchall()))
        assert abs(a - b) == 1  # as if one ran after the other each round (both at once: a == b)
        assert len(pids) == 2  # the pool's two connections, never a replacement
    finally:
        await db.close()


async def test_reads_sent_before_any_is_read_cost_one_round_trip_and_see_what_was_committed(db):
    await db.transact(lambda conn: conn.execute("INSERT INTO counters VALUES ('n', 7)"))

    def look(conn):
        sent = [conn.execute("SELECT value + ? FROM counters WHERE name = 'n'", (k,)) for k in range(3)]
        return [cursor.fetchone()[0] for cursor in sent], conn.round_trips

    assert await db.query(look) == ([7, 8, 9], 1)


async def test_a_read_that_fails_leaves_its_connection_fit_for_the_next(postgres_url):
    """Kept (a pool of one: the same server process throughout), and its statements, which
    psycopg prepares as they are used again, still run."""
    db = await Database.open(postgres_url, pool_size=1, rules=JOB_RULES)
    try:
        def read(failing: bool):
            def run(conn):
                first = conn.execute("SELECT pg_backend_pid() + ?", (0,))
                if failing:
                    conn.execute("SELECT 1/0")
                    for k in range(6):  # psycopg prepares it on one of these (its sixth use)
                        conn.execute("SELECT pg_backend_pid() + ?", (k,))
                return first.fetchone()[0]
            return run

        pids = set()
        for n in range(6):
            if n % 2 == 0:
                with pytest.raises(StorageUnavailable, match="division by zero"):
                    await db.query(read(True))
            else:
                pids.add(await db.query(read(False)))
        assert len(pids) == 1
    finally:
        await db.close()


async def test_a_body_that_returns_how_to_read_its_result_is_read_once_committed(db):
    """Its last results come back with the COMMIT (one round trip fewer), so they are read
    after it: the transaction is over by then, and what it wrote is there."""

    def body(conn):
        conn.execute("INSERT INTO counters VALUES (?, ?)", ("a", 1))
        written = conn.execute("SELECT value FROM counters WHERE name = ?", ("a",))
        return lambda: (conn.raw.info.transaction_status, written.fetchone()["value"])

    status, value = await db.transact_then_read(body)
    assert status == psycopg.pq.TransactionStatus.IDLE
    assert value == 1


async def test_a_body_that_returns_how_to_read_its_result_and_fails_to_commit_runs_again(db):
    await db.transact(lambda conn: conn.execute("INSERT INTO counters VALUES ('n', 0)"))
    both_read = threading.Barrier(2)
    runs: list[int] = []

    def increment(conn):
        value = conn.execute("SELECT value FROM counters WHERE name = 'n'").fetchone()["value"]
        runs.append(value)
        if len(runs) <= 2:
            both_read.wait(timeout=10)
        updated = conn.execute("UPDATE counters SET value = ? WHERE name = 'n' RETURNING value", (value + 1,))
        return lambda: updated.fetchone()["value"]

    results: list[int] = []

    async def run() -> None:
        results.append(await db.transact_then_read(increment))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        tg.start_soon(run)
    assert sorted(results) == [1, 2]  # the loser ran again and read the winner's write
    assert runs == [0, 0, 1]
