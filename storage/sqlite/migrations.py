"""The SQLite schema as numbered migrations, applied in order through `PRAGMA user_version`.

Times are integer epoch milliseconds, UTC. JSON columns hold compact JSON text that reads back
under the strict JSON rules (storage/rules.py). A step is SQL text, or a function over the
connection and those rules for a repair SQL cannot express; each runs inside the migrating transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from storage.rules import JobRules

# Every JSON column, as (table, key column, JSON column, whether a whole document); events' bodies are the
# exact bytes sent, an envelope around a job document around the client's input and metadata.
JSON_COLUMNS = (
    ("jobs", "id", "input", False),
    ("jobs", "id", "metadata", False),
    ("jobs", "id", "output_urls", False),
    ("jobs", "id", "candidates", False),
    ("jobs", "id", "webhook_events", False),
    ("subscriptions", "id", "events", False),
    ("events", "seq", "body", True),
)


def repair_stored_json(conn: sqlite3.Connection, rules: JobRules) -> None:
    """Rewrite every stored JSON value the strict parser would refuse (NaN, Infinity, numbers
    too long, lone surrogates, nesting too deep) so it reads back: such a row made every
    `GET /v1/jobs` page holding it a 500, and its events invalid JSON. Non-finite and over-long
    numbers become null and lone surrogates U+FFFD; rows already well-formed are not touched.
    """
    for table, key, column, document in JSON_COLUMNS:
        rows = conn.execute(f"SELECT {key}, {column} FROM {table}").fetchall()  # noqa: S608
        for row_key, value in rows:
            if value is None:
                continue
            repaired = rules.repair(value, document=document)
            if repaired is None:
                continue
            stored: str | bytes = repaired.encode("utf-8") if isinstance(value, bytes) else repaired
            conn.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?",  # noqa: S608
                         (stored, row_key))


Migration = str | Callable[[sqlite3.Connection, JobRules], None]

MIGRATIONS: tuple[Migration, ...] = (
    # 1: jobs, their stored outputs, the work queue (transactional outbox), inbound callbacks
    """
    CREATE TABLE jobs (
        id                TEXT PRIMARY KEY,
        provider          TEXT NOT NULL,
        model             TEXT NOT NULL,
        status            TEXT NOT NULL,
        input             TEXT NOT NULL,
        metadata          TEXT NOT NULL,
        provider_job_id   TEXT,
        polling_url       TEXT,
        webhook_secret    TEXT,
        output_urls       TEXT NOT NULL DEFAULT '[]',
        error_code        TEXT,
        error_message     TEXT,
        completion_source TEXT,
        progress          REAL,
        idempotency_key   TEXT UNIQUE,
        request_hash      TEXT,
        created_at        INTEGER NOT NULL,
        updated_at        INTEGER NOT NULL,
        submitted_at      INTEGER,
        ready_at          INTEGER,
        completed_at      INTEGER,
        deadline_at       INTEGER NOT NULL,
        poll_count        INTEGER NOT NULL DEFAULT 0,
        callback_count    INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_by_created ON jobs (created_at DESC, id DESC);
    CREATE INDEX jobs_by_status ON jobs (status, created_at DESC, id DESC);

    CREATE TABLE outputs (
        job_id       TEXT NOT NULL REFERENCES jobs (id),
        idx          INTEGER NOT NULL,
        sha256       TEXT NOT NULL,
        content_type TEXT NOT NULL,
        bytes        INTEGER NOT NULL,
        source_url   TEXT,
        stored_at    INTEGER NOT NULL,
        PRIMARY KEY (job_id, idx)
    );

    CREATE TABLE tasks (
        id          INTEGER PRIMARY KEY,
        job_id      TEXT NOT NULL REFERENCES jobs (id),
        kind        TEXT NOT NULL,
        due_at      INTEGER NOT NULL,
        lease_until INTEGER NOT NULL DEFAULT 0,
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT,
        created_at  INTEGER NOT NULL,
        UNIQUE (job_id, kind)
    );
    CREATE INDEX tasks_by_due ON tasks (due_at);

    CREATE TABLE callbacks (
        id          INTEGER PRIMARY KEY,
        job_id      TEXT NOT NULL REFERENCES jobs (id),
        provider    TEXT NOT NULL,
        body_sha256 TEXT NOT NULL,
        verdict     TEXT NOT NULL,
        state       TEXT,
        body        BLOB NOT NULL,
        received_at INTEGER NOT NULL,
        UNIQUE (job_id, body_sha256)
    );
    """,
    # 2: failover candidates and the attempt history; uploaded reference images
    """
    ALTER TABLE jobs ADD COLUMN candidates TEXT NOT NULL DEFAULT '[]';

    CREATE TABLE attempts (
        id              INTEGER PRIMARY KEY,
        job_id          TEXT NOT NULL REFERENCES jobs (id),
        provider        TEXT NOT NULL,
        outcome         TEXT NOT NULL,
        http_status     INTEGER,
        message         TEXT,
        provider_job_id TEXT,
        at              INTEGER NOT NULL
    );
    CREATE INDEX attempts_by_job ON attempts (job_id, id);

    CREATE TABLE uploads (
        id           TEXT PRIMARY KEY,
        sha256       TEXT NOT NULL,
        content_type TEXT NOT NULL,
        bytes        INTEGER NOT NULL,
        created_at   INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL
    );
    """,
    # 3: events (the durable log behind notifications and the live stream), subscriptions,
    #    deliveries (one per event and destination) and every delivery attempt
    """
    ALTER TABLE jobs ADD COLUMN webhook_url TEXT;
    ALTER TABLE jobs ADD COLUMN webhook_events TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE jobs ADD COLUMN event_count INTEGER NOT NULL DEFAULT 0;

    CREATE TABLE events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         TEXT NOT NULL UNIQUE,
        job_id     TEXT,
        job_seq    INTEGER,
        type       TEXT NOT NULL,
        body       BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX events_by_job ON events (job_id, job_seq);

    CREATE TABLE subscriptions (
        id                      TEXT PRIMARY KEY,
        url                     TEXT NOT NULL,
        events                  TEXT NOT NULL DEFAULT '[]',
        description             TEXT,
        secret                  TEXT NOT NULL,
        previous_secret         TEXT,
        previous_secret_until   INTEGER,
        status                  TEXT NOT NULL,
        disabled_reason         TEXT,
        failing_since           INTEGER,
        created_at              INTEGER NOT NULL,
        updated_at              INTEGER NOT NULL
    );

    CREATE TABLE deliveries (
        id              TEXT PRIMARY KEY,
        event_seq       INTEGER NOT NULL REFERENCES events (seq),
        subscription_id TEXT,
        job_id          TEXT,
        url             TEXT NOT NULL,
        status          TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER,
        lease_until     INTEGER NOT NULL DEFAULT 0,
        manual          INTEGER NOT NULL DEFAULT 0,
        last_status     INTEGER,
        last_error      TEXT,
        created_at      INTEGER NOT NULL,
        delivered_at    INTEGER
    );
    CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
    CREATE INDEX deliveries_by_subscription ON deliveries (subscription_id, created_at);
    CREATE INDEX deliveries_by_job ON deliveries (job_id, created_at);

    CREATE TABLE delivery_attempts (
        id              INTEGER PRIMARY KEY,
        delivery_id     TEXT NOT NULL REFERENCES deliveries (id),
        attempt         INTEGER NOT NULL,
        started_at      INTEGER NOT NULL,
        duration_ms     INTEGER NOT NULL,
        status_code     INTEGER,
        response_head   TEXT,
        error           TEXT,
        next_attempt_at INTEGER
    );
    CREATE INDEX delivery_attempts_by_delivery ON delivery_attempts (delivery_id, id);
    """,
    # 4: never pay twice: the provider task each callback names, so an unsigned one can be
    #    confirmed by polling that task before the job adopts it (service/adoption.py)
    """
    ALTER TABLE callbacks ADD COLUMN provider_job_id TEXT;
    CREATE INDEX attempts_unknown ON attempts (provider, job_id)
        WHERE outcome = 'unknown' AND provider_job_id IS NULL;
    """,
    # 5: the address the web process serves, announced for workers that were given none
    #    (one row; `owner` is the announcing process, so only it withdraws the row)
    """
    CREATE TABLE announced_address (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        owner        TEXT NOT NULL,
        public_url   TEXT NOT NULL,
        announced_at INTEGER NOT NULL
    );
    """,
    # 6: stored JSON that the strict boundary would refuse
    repair_stored_json,
    # 7: per-provider caps on active jobs (storage/sql/tasks.py claim_due_tasks). A submit task
    #    carries its job's provider and model, so the submits waiting for one provider (or one
    #    of its models) are an index range in due order; triggers keep the copies equal to the
    #    job's (also through a failover), whatever code inserts the task or moves the job. The
    #    jobs active at a provider (sent, without its final word) are a partial index, so
    #    counting them reads only them.
    """
    ALTER TABLE tasks ADD COLUMN provider TEXT NOT NULL DEFAULT '';
    ALTER TABLE tasks ADD COLUMN model TEXT NOT NULL DEFAULT '';
    UPDATE tasks SET provider = COALESCE((SELECT provider FROM jobs WHERE jobs.id = tasks.job_id), ''),
                     model = COALESCE((SELECT model FROM jobs WHERE jobs.id = tasks.job_id), '')
        WHERE kind = 'submit';
    CREATE TRIGGER submit_task_takes_job_provider AFTER INSERT ON tasks WHEN NEW.kind = 'submit'
    BEGIN
        UPDATE tasks SET provider = COALESCE((SELECT provider FROM jobs WHERE id = NEW.job_id), ''),
                         model = COALESCE((SELECT model FROM jobs WHERE id = NEW.job_id), '')
            WHERE id = NEW.id;
    END;
    CREATE TRIGGER submit_task_follows_job_provider AFTER UPDATE OF provider ON jobs
    BEGIN
        UPDATE tasks SET provider = NEW.provider WHERE job_id = NEW.id AND kind = 'submit';
    END;
    CREATE INDEX tasks_submits_due ON tasks (provider, due_at) WHERE kind = 'submit';
    CREATE INDEX tasks_submits_due_by_model ON tasks (provider, model, due_at) WHERE kind = 'submit';
    CREATE INDEX tasks_submits_leased ON tasks (provider, lease_until) WHERE kind = 'submit';
    CREATE INDEX tasks_others_due ON tasks (due_at, lease_until) WHERE kind != 'submit';
    CREATE INDEX jobs_active_at_provider ON jobs (provider, model)
        WHERE status IN ('submitted', 'running') AND output_urls = '[]';
    """,
    # 8: data lifecycle: when a job's outputs were removed (DELETE or retention), images whose
    #    last reference is gone and whose file is still to be removed, and indexes for pruning
    """
    ALTER TABLE jobs ADD COLUMN outputs_deleted_at INTEGER;

    CREATE TABLE blob_garbage (
        sha256    TEXT PRIMARY KEY,
        queued_at INTEGER NOT NULL
    );

    CREATE INDEX outputs_by_sha ON outputs (sha256);
    CREATE INDEX uploads_by_sha ON uploads (sha256);
    CREATE INDEX jobs_with_outputs_by_completed ON jobs (completed_at) WHERE outputs_deleted_at IS NULL;
    CREATE INDEX events_by_created ON events (created_at);
    CREATE INDEX deliveries_by_event ON deliveries (event_seq, status);
    CREATE INDEX callbacks_by_received ON callbacks (received_at);
    CREATE INDEX delivery_attempts_by_started ON delivery_attempts (started_at);
    """,
    # 9: every hot query reads an index range, so what idle workers, ticks and streams cost does
    #    not grow with the jobs in flight (tests/test_query_plans.py): the leased polls and
    #    downloads, and the leased pending deliveries (when a lease runs out is part of the next
    #    due time, storage/sql/tasks.py `_OTHERS_NEXT`); a job's events, and one type's, in log
    #    order (filtered event streams), where events_by_job's (job_id, job_seq) gave the job's
    #    events only to be sorted. An index ends with its table's rowid in SQLite; `seq` is
    #    named for PostgreSQL.
    """
    CREATE INDEX tasks_others_leased ON tasks (lease_until) WHERE kind != 'submit';
    CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE status = 'pending';
    DROP INDEX events_by_job;
    CREATE INDEX events_of_job ON events (job_id, seq);
    CREATE INDEX events_of_type ON events (type, seq);
    """,
    # 10: the callback inbox: a verified callback is recorded (its row in `callbacks`, and one
    #     here) and acknowledged; it is applied to its job (state machine, events, tasks) soon
    #     after, off the request path, and its inbox row is deleted in that same transaction
    #     (service/callbacks.py). A row here is a callback recorded and not yet applied.
    """
    CREATE TABLE inbox (
        callback_id INTEGER PRIMARY KEY REFERENCES callbacks (id) ON DELETE CASCADE,
        job_id      TEXT NOT NULL,
        received_at INTEGER NOT NULL
    );
    CREATE INDEX inbox_by_job ON inbox (job_id);
    """,
    # 11: the dashboard: every answered poll, for a job's timeline; each output's thumbnail,
    #     made once and kept in the blob store (service/thumbnails.py), queued for removal with
    #     its output's image (storage/sql/retention.py)
    """
    CREATE TABLE polls (
        id       INTEGER PRIMARY KEY,
        job_id   TEXT NOT NULL REFERENCES jobs (id),
        provider TEXT NOT NULL,
        status   TEXT NOT NULL,
        progress REAL,
        at       INTEGER NOT NULL
    );
    CREATE INDEX polls_of_job ON polls (job_id, id);
    ALTER TABLE outputs ADD COLUMN thumb_sha256 TEXT;
    CREATE INDEX outputs_by_thumb ON outputs (thumb_sha256) WHERE thumb_sha256 IS NOT NULL;
    """,
    # 12: polls are pruned with the callbacks (FLUXHOOK_RETAIN_CALLBACKS_SECONDS), oldest
    #     first, a batch at a time (service/retention.py); GET /v1/jobs?provider= pages by index
    """
    CREATE INDEX polls_by_time ON polls (at);
    CREATE INDEX jobs_by_provider ON jobs (provider, created_at DESC, id DESC);
    """,
)
