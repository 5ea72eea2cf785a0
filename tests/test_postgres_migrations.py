"""The PostgreSQL dialect of the migrations: the SQLite schema's twin, applied once under a lock."""

from __future__ import annotations

import sqlite3
import threading

import psycopg
import pytest

from service.rules import JOB_RULES
from storage.postgres.migrations import MIGRATIONS, migrate
from storage.sqlite.migrations import MIGRATIONS as SQLITE_MIGRATIONS


def sqlite_schema(tmp_path):
    conn = sqlite3.connect(tmp_path / "schema.db")
    for step in SQLITE_MIGRATIONS:
        if callable(step):
            step(conn, JOB_RULES)
        else:
            conn.executescript(step)
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    columns = {t: {(r[1], bool(r[3] or r[5])) for r in conn.execute(f"PRAGMA table_info({t})")}
               for t in tables}
    indexes = {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'")}
    unique = set()
    for table in tables:
        for _, name, is_unique, origin, _ in conn.execute(f"PRAGMA index_list({table})"):
            if is_unique and origin in ("u", "pk"):
                unique.add((table, tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})"))))
        info = sorted(conn.execute(f"PRAGMA table_info({table})"), key=lambda r: r[5])
        pk = tuple(r[1] for r in info if r[5])
        unique.add((table, pk))
    triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    conn.close()
    return set(tables), columns, indexes, unique, triggers


def postgres_schema(url):
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename != 'schema_version'")]
        columns = {t: {(name, not_null == "NO") for name, not_null in conn.execute(
            "SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = %s", (t,))}
            for t in tables}
        indexes = {r[0] for r in conn.execute(
            """SELECT indexname FROM pg_indexes WHERE schemaname = 'public'
               AND indexname NOT IN (SELECT conname FROM pg_constraint)""")}
        unique = {(table, tuple(cols)) for table, cols in conn.execute(
            """SELECT c.conrelid::regclass::text,
                      array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i)
               FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
               WHERE c.contype IN ('u', 'p') AND r.relnamespace = 'public'::regnamespace
               AND r.relname != 'schema_version'""")}
        triggers = {r[0] for r in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgname NOT LIKE 'fluxhook%'")}
    return set(tables), columns, indexes, unique, triggers


def test_postgres_has_the_same_numbered_steps_as_sqlite():
    assert len(MIGRATIONS) == len(SQLITE_MIGRATIONS)


def test_postgres_schema_has_the_sqlite_tables_columns_indexes_keys_and_triggers(tmp_path, postgres_url):
    tables, columns, indexes, unique, triggers = sqlite_schema(tmp_path)
    pg_tables, pg_columns, pg_indexes, pg_unique, pg_triggers = postgres_schema(postgres_url)
    assert pg_tables == tables
    for table in tables:
        assert pg_columns[table] == columns[table], table
    assert pg_indexes == indexes
    assert pg_unique == unique
    assert pg_triggers == triggers


@pytest.mark.e2e
def test_ten_migrators_starting_at_once_apply_the_schema_once(empty_postgres_url):
    start = threading.Barrier(10)
    applied: list[int] = []
    failed: list[BaseException] = []

    def migrator():
        try:
            with psycopg.connect(empty_postgres_url, autocommit=True) as conn:
                start.wait(timeout=30)
                applied.append(migrate(conn))
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=migrator) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failed == []
    assert sorted(applied) == [0] * 9 + [len(MIGRATIONS)]
    with psycopg.connect(empty_postgres_url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]


def test_migrating_an_up_to_date_database_changes_nothing(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert migrate(conn) == 0


def test_a_database_an_older_fluxhook_made_gets_the_wake_ups_added_since(postgres_url):
    """The wake-up triggers are not a numbered step: a database made before the inbox woke the
    workers (no marker on the wake function) gets them all again when a process starts."""
    trigger = "SELECT count(*) FROM pg_trigger WHERE tgname = 'fluxhook_wake_inbox'"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER fluxhook_wake_inbox ON inbox")
        conn.execute("COMMENT ON FUNCTION fluxhook_wake() IS NULL")
        assert conn.execute(trigger).fetchone() == (0,)
        assert migrate(conn) == 0  # no numbered step to apply
        assert conn.execute(trigger).fetchone() == (1,)
        conn.execute("DROP TRIGGER fluxhook_wake_inbox ON inbox")  # marked now: left as it is
        migrate(conn)
        assert conn.execute(trigger).fetchone() == (0,)


def test_a_submit_task_carries_its_jobs_provider_and_follows_a_failover(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO jobs (id, provider, model, status, input, metadata, created_at, updated_at,
                                 deadline_at)
               VALUES ('job_1', 'bfl', 'flux-dev', 'queued', '{}', '{}', 1, 1, 2)""")
        conn.execute("INSERT INTO tasks (job_id, kind, due_at, created_at) VALUES ('job_1', 'submit', 1, 1)")
        conn.execute("INSERT INTO tasks (job_id, kind, due_at, created_at) VALUES ('job_1', 'poll', 1, 1)")
        rows = conn.execute("SELECT kind, provider, model FROM tasks ORDER BY kind").fetchall()
        assert rows == [("poll", "", ""), ("submit", "bfl", "flux-dev")]
        conn.execute("UPDATE jobs SET provider = 'cometapi' WHERE id = 'job_1'")
        rows = conn.execute("SELECT kind, provider, model FROM tasks ORDER BY kind").fetchall()
        assert rows == [("poll", "", ""), ("submit", "cometapi", "flux-dev")]


def test_text_orders_byte_by_byte_as_in_sqlite(postgres_url):
    ids = ["job_b", "job_B", "job_a", "job-a", "job_Ä"]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for job_id in ids:
            conn.execute(
                """INSERT INTO jobs (id, provider, model, status, input, metadata, created_at, updated_at,
                                     deadline_at) VALUES (%s, 'bfl', 'm', 'queued', '{}', '{}', 1, 1, 2)""",
                (job_id,))
        ordered = [r[0] for r in conn.execute("SELECT id FROM jobs ORDER BY id")]
    assert ordered == sorted(ids, key=lambda s: s.encode())


def test_two_argument_min_and_max_answer_as_in_sqlite(tmp_path, postgres_url):
    rows = [(1, 5), (7, 2), (None, 3), (4, 4)]
    queries = ["SELECT MAX(a, b), MIN(a, b), MAX(a - 1, 0) FROM t ORDER BY rowid_",
               "SELECT MIN(MAX(a, b)), MAX(a), MIN(b) FROM t"]
    lite = sqlite3.connect(tmp_path / "minmax.db")
    lite.execute("CREATE TABLE t (rowid_ INTEGER, a INTEGER, b INTEGER)")
    lite.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, *r) for i, r in enumerate(rows)])
    expected = [lite.execute(q).fetchall() for q in queries]
    lite.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (rowid_ BIGINT, a BIGINT, b BIGINT)")
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO t VALUES (%s, %s, %s)", [(i, *r) for i, r in enumerate(rows)])
        assert [conn.execute(q).fetchall() for q in queries] == expected


def test_an_upsert_keeps_the_earlier_due_time_as_the_sqlite_store_writes_it(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO jobs (id, provider, model, status, input, metadata, created_at, updated_at,
                                 deadline_at)
               VALUES ('job_1', 'bfl', 'flux-dev', 'queued', '{}', '{}', 1, 1, 2)""")
        for due in (50, 80, 20):
            conn.execute(
                """INSERT INTO tasks (job_id, kind, due_at, created_at) VALUES ('job_1', 'poll', %s, 1)
                   ON CONFLICT (job_id, kind) DO UPDATE SET due_at = MIN(tasks.due_at, excluded.due_at)""",
                (due,))
        assert conn.execute("SELECT due_at FROM tasks").fetchall() == [(20,)]
