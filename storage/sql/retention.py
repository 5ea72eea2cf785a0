"""Data lifecycle: the store that removes a job's outputs and prunes old rows.

Every method is one short transaction over at most `limit` rows, so pruning a large backlog
runs as many small batches with other writers (callbacks first of all) in between; the policy
(what is old, how many per batch, when a file may go) is service/retention.py's.

Images are content-addressed, so one file may back several jobs' outputs and uploads. Removing
a job's outputs only marks them removed (`jobs.outputs_deleted_at`) and queues their sha256 in
`blob_garbage`, in the same transaction; `unreferenced_blobs` then names the queued images that
nothing still references, and the caller removes those files after that commit (see
service/retention.py for why that order is the safe one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from storage.records import JobRecord
from storage.state import TERMINAL

if TYPE_CHECKING:
    from storage.sql import Conn, SqlDatabase

_FINAL = tuple(status.value for status in TERMINAL)
_FINAL_MARKS = ",".join("?" * len(_FINAL))


class RetentionStore:
    """Removal and pruning, in short batches."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def remove_job_outputs(self, job_id: str, *, now: int) -> JobRecord | None:
        """Mark a final job's outputs removed and queue its images; the job otherwise stays as
        it is (attempts, events, callbacks). A job not final, or already removed, is unchanged.
        None if there is no such job."""

        def remove(conn: Conn) -> JobRecord | None:
            cursor = conn.execute(
                f"""UPDATE jobs SET outputs_deleted_at = ?
                    WHERE id = ? AND outputs_deleted_at IS NULL AND status IN ({_FINAL_MARKS})""",  # noqa: S608
                (now, job_id, *_FINAL),
            )
            if cursor.rowcount:
                _queue_images(conn, [job_id], now)
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return JobRecord.from_row(row, self._db.rules.decode) if row else None

        return await self._db.transact(remove)

    async def remove_old_outputs(self, *, completed_before: int, now: int, limit: int) -> int:
        """Remove the outputs of up to `limit` final jobs completed before `completed_before`
        (as `remove_job_outputs` does); how many jobs."""

        def remove(conn: Conn) -> int:
            ids = [
                row[0]
                for row in conn.execute(
                    f"""SELECT id FROM jobs
                        WHERE outputs_deleted_at IS NULL AND completed_at < ?
                          AND status IN ({_FINAL_MARKS})
                          AND EXISTS (SELECT 1 FROM outputs o WHERE o.job_id = jobs.id)
                        ORDER BY completed_at LIMIT ?""",  # noqa: S608
                    (completed_before, *_FINAL, limit),
                ).fetchall()
            ]
            marks = ",".join("?" * len(ids))
            conn.execute(f"UPDATE jobs SET outputs_deleted_at = ? WHERE id IN ({marks})", (now, *ids))  # noqa: S608
            _queue_images(conn, ids, now)
            return len(ids)

        return await self._db.transact(remove)

    async def unreferenced_blobs(
        self, *, after: str, now: int, limit: int, only: Sequence[str] | None = None
    ) -> tuple[list[str], str | None]:
        """Look at up to `limit` queued images (sha256 order, from after `after`): forget those
        a job whose outputs are kept references (removing that job's outputs queues them
        again), keep queued those only an upload not yet expired references (looked at again
        next time), and name the rest, whose files may go. Also the last sha256 looked at (None
        when there were no more), to carry on from. `only` limits the look to those images."""
        among = f"AND sha256 IN ({','.join('?' * len(only))})" if only is not None else ""

        def look(conn: Conn) -> tuple[list[str], str | None]:
            queued = [
                row[0]
                for row in conn.execute(
                    f"SELECT sha256 FROM blob_garbage WHERE sha256 > ? {among} ORDER BY sha256 LIMIT ?",  # noqa: S608
                    (after, *(only or ()), limit),
                ).fetchall()
            ]
            unreferenced = []
            for sha256 in queued:
                if _kept_by_a_job(conn, sha256):
                    conn.execute("DELETE FROM blob_garbage WHERE sha256 = ?", (sha256,))
                elif not _kept_by_an_upload(conn, sha256, now):
                    unreferenced.append(sha256)
            return unreferenced, (queued[-1] if queued else None)

        return await self._db.transact(look)

    async def forget_blobs(self, sha256s: Sequence[str]) -> None:
        """The files of these queued images are gone: take them off the queue."""

        def forget(conn: Conn) -> None:
            conn.executemany("DELETE FROM blob_garbage WHERE sha256 = ?", [(s,) for s in sha256s])

        await self._db.transact(forget)

    async def prune_events(self, *, before: int, limit: int) -> int:
        """Delete up to `limit` events created before `before` that no delivery still has to
        send, with their deliveries and the deliveries' attempts; how many events."""

        def prune(conn: Conn) -> int:
            seqs = [
                row[0]
                for row in conn.execute(
                    """SELECT seq FROM events e WHERE created_at < ?
                         AND seq < (SELECT MAX(seq) FROM events)  -- the newest stays: seqs are never reused
                         AND NOT EXISTS (SELECT 1 FROM deliveries d
                                         WHERE d.event_seq = e.seq AND d.status = 'pending')
                       ORDER BY created_at, seq LIMIT ?""",  # events_by_created's order: none old, none read
                    (before, limit),
                ).fetchall()
            ]
            if not seqs:
                return 0
            marks = ",".join("?" * len(seqs))
            conn.execute(
                f"""DELETE FROM delivery_attempts WHERE delivery_id IN
                    (SELECT id FROM deliveries WHERE event_seq IN ({marks}))""",  # noqa: S608
                seqs,
            )
            conn.execute(f"DELETE FROM deliveries WHERE event_seq IN ({marks})", seqs)  # noqa: S608
            conn.execute(f"DELETE FROM events WHERE seq IN ({marks})", seqs)  # noqa: S608
            return len(seqs)

        return await self._db.transact(prune)

    async def prune_callbacks(self, *, before: int, limit: int) -> int:
        """Delete up to `limit` received callbacks (their raw bodies) older than `before`."""
        return await self._db.transact(
            lambda conn: conn.execute(
                "DELETE FROM callbacks WHERE id IN "
                "(SELECT id FROM callbacks WHERE received_at < ? ORDER BY received_at LIMIT ?)",
                (before, limit),
            ).rowcount
        )

    async def prune_polls(self, *, before: int, limit: int) -> int:
        """Delete up to `limit` answered polls (a job's timeline) older than `before`."""
        return await self._db.transact(
            lambda conn: conn.execute(
                "DELETE FROM polls WHERE id IN (SELECT id FROM polls WHERE at < ? ORDER BY at LIMIT ?)",
                (before, limit),
            ).rowcount
        )

    async def prune_delivery_attempts(self, *, before: int, limit: int) -> int:
        """Delete up to `limit` delivery attempts started before `before` (the delivery keeps its
        count, last status and error)."""
        return await self._db.transact(
            lambda conn: conn.execute(
                "DELETE FROM delivery_attempts WHERE id IN "
                "(SELECT id FROM delivery_attempts WHERE started_at < ? ORDER BY started_at LIMIT ?)",
                (before, limit),
            ).rowcount
        )


def _queue_images(conn: Conn, job_ids: Sequence[str], now: int) -> None:
    """The outputs' images and their thumbnails (migration 11)."""
    marks = ",".join("?" * len(job_ids))
    conn.execute(
        f"""INSERT INTO blob_garbage (sha256, queued_at)
            SELECT sha256, ? FROM outputs WHERE job_id IN ({marks})
            UNION SELECT thumb_sha256, ? FROM outputs WHERE job_id IN ({marks}) AND thumb_sha256 IS NOT NULL
            ON CONFLICT (sha256) DO NOTHING""",  # noqa: S608
        (now, *job_ids, now, *job_ids),
    )


def _kept_by_a_job(conn: Conn, sha256: str) -> bool:
    """Any job's output (or its thumbnail) whose outputs are not removed: a job not final, or
    final and kept."""
    row = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM outputs o JOIN jobs j ON j.id = o.job_id
                          WHERE o.sha256 = ? AND j.outputs_deleted_at IS NULL)
               OR EXISTS (SELECT 1 FROM outputs o JOIN jobs j ON j.id = o.job_id
                          WHERE o.thumb_sha256 = ? AND j.outputs_deleted_at IS NULL)""",
        (sha256, sha256),
    ).fetchone()
    return bool(row[0])


def _kept_by_an_upload(conn: Conn, sha256: str, now: int) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM uploads WHERE sha256 = ? AND expires_at > ?)", (sha256, now)
    ).fetchone()
    return bool(row[0])
