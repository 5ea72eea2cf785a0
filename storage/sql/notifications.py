"""Events, subscriptions and deliveries: the outbound half of the store.

An event is written in the same transaction as the job change that caused it, and so are its
deliveries (one per destination), so a crash can never lose a notification or send one for a
change that did not happen. Three stores share one module and the database's transactions:
subscriptions, deliveries and the event log; `emit_job_event` is what the job store calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storage.records import (
    AttemptRecord,
    AttemptResult,
    ClaimedDelivery,
    DeliveryAttemptRecord,
    DeliveryLease,
    DeliveryRecord,
    EventRecord,
    JobRecord,
    OutputRecord,
    SubscriptionRecord,
    destination_key,
)
from storage.rules import JobRules

if TYPE_CHECKING:
    from storage.sql import Conn, Row, SqlDatabase

@dataclass(frozen=True)
class EventReads:
    """What a job's event is built from besides the job: its outputs, its attempts and the
    enabled subscriptions, each read when called from a query sent earlier (`send_event_reads`)."""

    outputs: Callable[[], list[OutputRecord]]
    attempts: Callable[[], list[AttemptRecord]]
    subscriptions: Callable[[], list[Row]]


def send_event_reads(conn: Conn, job_id: str, *, outputs: Callable[[], list[OutputRecord]] | None = None
                     ) -> EventReads:
    """Send the reads `emit_job_event` needs (the job's outputs unless given): a body that
    sends them with its own first read pays no round trip of theirs on PostgreSQL."""
    attempt_rows = conn.execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY id", (job_id,))
    subscriptions = _subscriptions(conn)
    if outputs is None:
        output_rows = conn.execute("SELECT * FROM outputs WHERE job_id = ? ORDER BY idx", (job_id,))
        outputs = lambda: [OutputRecord.from_row(r) for r in output_rows.fetchall()]  # noqa: E731
    return EventReads(outputs, lambda: [AttemptRecord.from_row(r) for r in attempt_rows.fetchall()],
                      subscriptions.fetchall)


def emit_job_event(
    conn: Conn, job_id: str, load_job: Callable[[], JobRecord], event_type: str, *, now: int,
    rules: JobRules, public_url: str, reads: EventReads | None = None,
) -> None:
    """Record one job event (a snapshot of the job document, read by `load_job`) and its
    deliveries. The job's `event_count` already counts it (storage/sql/jobs.py `_write_state`
    wrote it with the change): it is the event's number in the job. Every read is sent before
    the job's is read (or earlier still: `reads`), and the deliveries name their event by its
    id (its seq is the database's to give): on PostgreSQL (pipelined) the reads cost at most one
    round trip, and the writes none of their own."""
    reads = reads or send_event_reads(conn, job_id)
    job = load_job()
    outputs = reads.outputs()
    attempts = reads.attempts()
    sequence = job.event_count
    event_id = rules.new_id("evt", now)
    body = rules.job_event(job, outputs, attempts, event_id=event_id, event_type=event_type, now=now,
                           sequence=sequence, public_url=public_url)
    conn.execute(
        "INSERT INTO events (id, job_id, job_seq, type, body, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (event_id, job.id, sequence, event_type, body, now),
    )
    _fan_out(conn, event_id, event_type, reads.subscriptions(), job_id=job.id, now=now, rules=rules)
    if job.webhook_url and (not job.webhook_events or event_type in job.webhook_events):
        _add_delivery(conn, event_id, None, job.id, job.webhook_url, now, rules)


def lease_new_deliveries(
    conn: Conn, job_id: str, *, now: int, lease: DeliveryLease
) -> Callable[[], list[ClaimedDelivery]]:
    """Lease, for a notifier in the caller's process, the deliveries of `job_id`'s events this
    transaction made (`emit_job_event` at `now`), as a claim would (the attempt counted, the
    destinations in `lease.exclude` left out); what to send, read when the result is called.

    Both statements are sent at once, and on PostgreSQL read with the COMMIT (pipelined): the
    lease costs no round trip. The rows were inserted by this transaction, so no other holds
    them, and each subscription was enabled when the event was fanned out to it."""
    not_full = (f"AND {_DESTINATION} NOT IN ({','.join('?' * len(lease.exclude))})"
                if lease.exclude else "")
    conn.execute(
        f"""UPDATE deliveries SET lease_until = ?, attempts = attempts + 1
            WHERE id IN (SELECT id FROM deliveries WHERE job_id = ? AND created_at = ?
                         AND status = 'pending' AND attempts = 0 AND lease_until = 0
                         AND next_attempt_at <= ? {not_full} ORDER BY id LIMIT ?)""",  # noqa: S608
        (lease.until, job_id, now, now, *lease.exclude, lease.limit),
    )
    cursor = conn.execute(
        f"""{_CLAIMED_COLUMNS} WHERE d.job_id = ? AND d.created_at = ? AND d.lease_until = ?
            AND d.status = 'pending' ORDER BY d.id""",
        (job_id, now, lease.until),
    )
    return lambda: [_claimed(row, row["url"], now) for row in cursor.fetchall()]


def deliveries_made(conn: Conn, job_ids: Sequence[str], *, now: int) -> Callable[[], bool]:
    """Whether this transaction (at `now`) made deliveries of `job_ids`' events still to send."""
    marks = ",".join("?" * len(job_ids))
    cursor = conn.execute(
        f"""SELECT 1 FROM deliveries WHERE job_id IN ({marks}) AND created_at = ?
            AND status = 'pending' AND lease_until = 0 LIMIT 1""",  # noqa: S608
        (*job_ids, now),
    )
    return lambda: cursor.fetchone() is not None


def emit_system_event(
    conn: Conn, event_type: str, data: Mapping[str, Any], *, now: int, rules: JobRules
) -> int:
    event_id = rules.new_id("evt", now)
    body = rules.system_event(data, event_id=event_id, event_type=event_type, now=now)
    seq = int(conn.execute(
        "INSERT INTO events (id, job_id, job_seq, type, body, created_at) VALUES (?, NULL, NULL, ?, ?, ?) "
        "RETURNING seq",
        (event_id, event_type, body, now),
    ).fetchone()[0])
    _fan_out(conn, seq, event_type, _subscriptions(conn).fetchall(), job_id=None, now=now, rules=rules)
    return seq


def _subscriptions(conn: Conn) -> Any:
    """The enabled subscriptions (a cursor: sent now, read when needed)."""
    return conn.execute("SELECT id, url, events FROM subscriptions WHERE status = 'enabled'")


def _fan_out(
    conn: Conn, event: int | str, event_type: str, subscriptions: Sequence[Row], *, job_id: str | None,
    now: int, rules: JobRules,
) -> None:
    for row in subscriptions:
        wanted = rules.decode(row["events"])
        if not wanted or event_type in wanted:
            _add_delivery(conn, event, row["id"], job_id, row["url"], now, rules)


def _add_delivery(
    conn: Conn, event: int | str, subscription_id: str | None, job_id: str | None, url: str, now: int,
    rules: JobRules,
) -> None:
    """A delivery of the event with this seq (an int) or this id (a str: its seq looked up)."""
    seq = "?" if isinstance(event, int) else "(SELECT seq FROM events WHERE id = ?)"
    conn.execute(
        f"""INSERT INTO deliveries (id, event_seq, subscription_id, job_id, url, status, next_attempt_at,
               created_at) VALUES (?, {seq}, ?, ?, ?, 'pending', ?, ?)""",  # noqa: S608
        (rules.new_id("dlv", now), event, subscription_id, job_id, url, now, now),
    )


class SubscriptionStore:
    """Notification subscriptions: where events go."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def create_subscription(self, sub: SubscriptionRecord) -> SubscriptionRecord:
        def create(conn: Conn) -> SubscriptionRecord:
            conn.execute(
                """INSERT INTO subscriptions (id, url, events, description, secret, status, created_at,
                       updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    sub.id,
                    sub.url,
                    self._db.rules.encode(list(sub.events), path="events"),
                    sub.description,
                    sub.secret,
                    sub.status,
                    sub.created_at,
                    sub.updated_at,
                ),
            )
            return _subscription(conn, self._db.rules, sub.id)  # type: ignore[return-value]

        return await self._db.transact(create)

    async def get_subscription(self, sub_id: str) -> SubscriptionRecord | None:
        return await self._db.query(lambda conn: _subscription(conn, self._db.rules, sub_id))

    async def list_subscriptions(self) -> list[SubscriptionRecord]:
        rows = await self._db.query(
            lambda conn: conn.execute("SELECT * FROM subscriptions ORDER BY created_at, id").fetchall()
        )
        return [SubscriptionRecord.from_row(r, self._db.rules.decode) for r in rows]

    async def update_subscription(
        self, sub_id: str, changes: Mapping[str, Any], *, now: int
    ) -> SubscriptionRecord | None:
        """Apply `changes` (url, events, description, status); enabling clears the failure clock."""

        def update(conn: Conn) -> SubscriptionRecord | None:
            if _subscription(conn, self._db.rules, sub_id) is None:
                return None
            for name, value in changes.items():
                if name == "events":
                    value = self._db.rules.encode(list(value), path="events")
                assert name in ("url", "events", "description", "status")
                conn.execute(f"UPDATE subscriptions SET {name} = ? WHERE id = ?", (value, sub_id))  # noqa: S608
            if changes.get("status") == "enabled":
                conn.execute(
                    "UPDATE subscriptions SET disabled_reason = NULL, failing_since = NULL WHERE id = ?",
                    (sub_id,),
                )
            conn.execute("UPDATE subscriptions SET updated_at = ? WHERE id = ?", (now, sub_id))
            return _subscription(conn, self._db.rules, sub_id)

        return await self._db.transact(update)

    async def delete_subscription(self, sub_id: str, *, now: int) -> bool:
        def delete(conn: Conn) -> bool:
            if _subscription(conn, self._db.rules, sub_id) is None:
                return False
            conn.execute(
                "UPDATE deliveries SET status = 'cancelled', last_error = 'subscription deleted' "
                "WHERE subscription_id = ? AND status = 'pending'",
                (sub_id,),
            )
            conn.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,))
            return True

        return await self._db.transact(delete)

    async def rotate_subscription_secret(
        self, sub_id: str, new_secret: str, *, now: int, grace_ms: int
    ) -> SubscriptionRecord | None:
        """The old secret keeps signing beside the new one until `now + grace_ms`."""

        def rotate(conn: Conn) -> SubscriptionRecord | None:
            if _subscription(conn, self._db.rules, sub_id) is None:
                return None
            conn.execute(
                """UPDATE subscriptions SET previous_secret = secret, previous_secret_until = ?,
                       secret = ?, updated_at = ? WHERE id = ?""",
                (now + grace_ms, new_secret, now, sub_id),
            )
            return _subscription(conn, self._db.rules, sub_id)

        return await self._db.transact(rotate)


class DeliveryStore:
    """Deliveries: one per event and destination, leased, attempted, retried."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def claim_due_deliveries(
        self, *, now: int, limit: int, lease_ms: int, busy: Mapping[str, int], per_destination: int,
        job_id: str | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease due deliveries, at most `per_destination` in flight per destination; with
        `job_id`, only that job's (what a request that caused them sends before answering).

        Destinations already at their cap are left out of the query itself, and it looks again
        until `limit` are leased or none is left: with a plain LIMIT window, one slow
        destination's backlog of due rows (all skipped) could fill the window and starve every
        other destination until it drained. A subscription's delivery goes to the subscription's
        URL as it is now, so a changed URL applies to retries, redeliveries and recoveries.
        """

        # On PostgreSQL a delivery another claimer has just locked is passed over, not waited for.
        skip_locked = self._db.dialect.skip_locked.replace("UPDATE", "UPDATE OF d")

        def claim(conn: Conn) -> list[ClaimedDelivery]:
            taken: dict[str, int] = dict(busy)
            claimed: list[ClaimedDelivery] = []
            while len(claimed) < limit:
                # Every row looked at below is cancelled, leased (lease_until > now) or skipped
                # because its destination is full, so no row comes back again: this ends.
                full = [key for key, count in taken.items() if count >= per_destination]
                marks = ",".join("?" * len(full))
                not_full = f"AND COALESCE(d.subscription_id, d.url) NOT IN ({marks})" if full else ""
                of_job = "AND d.job_id = ?" if job_id is not None else ""
                rows = conn.execute(
                    f"""{_CLAIMED_COLUMNS}
                   WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND d.lease_until <= ? {not_full}
                   {of_job} ORDER BY d.next_attempt_at, d.created_at LIMIT ? {skip_locked}""",
                    (now, now, *full, *([job_id] if job_id is not None else []), limit * 4),
                ).fetchall()
                if not rows:
                    break
                last_look = len(rows) < limit * 4  # every candidate row is in hand
                for row in rows:
                    if len(claimed) >= limit:
                        break
                    if row["subscription_id"] is not None and row["sub_status"] != "enabled":
                        conn.execute(
                            "UPDATE deliveries SET status = 'cancelled', last_error = ? WHERE id = ?",
                            ("subscription disabled or deleted", row["id"]),
                        )
                        continue
                    key = destination_key(row["subscription_id"], row["url"])
                    if taken.get(key, 0) >= per_destination:
                        continue
                    taken[key] = taken.get(key, 0) + 1
                    url = row["sub_url"] if row["subscription_id"] is not None else row["url"]
                    conn.execute(
                        "UPDATE deliveries SET lease_until = ?, attempts = attempts + 1, url = ? "
                        "WHERE id = ?",
                        (now + lease_ms, url, row["id"]),
                    )
                    claimed.append(_claimed(row, url, now, attempt=row["attempts"] + 1,
                                            lease_until=now + lease_ms))
                if last_look:  # a look again could only find rows just passed over
                    break
            return claimed

        # It leases only rows it has locked (FOR UPDATE SKIP LOCKED, which on PostgreSQL looks
        # again at a row changed since the snapshot) and caps destinations by what this process
        # holds: serializable, it would conflict with every delivery recorded and every event
        # fanned out meanwhile, and it or they would run again.
        return await self._db.transact(claim, locked_claim=True, durable=False)

    async def release_deliveries(self, leases: Sequence[tuple[str, int]]) -> int:
        """Hand back deliveries this process leased but did not attempt to the end (it is
        stopping): due again at once, and the interrupted try is not counted. A lease that is
        no longer the one given by the claim (the attempt was recorded, or the lease ran out
        and another process holds it) is left alone. How many were handed back."""

        def release(conn: Conn) -> int:
            return sum(
                conn.execute(
                    "UPDATE deliveries SET lease_until = 0, "
                    "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
                    "WHERE id = ? AND lease_until = ? AND status = 'pending'",
                    (delivery_id, lease_until),
                ).rowcount
                for delivery_id, lease_until in leases
            )

        return await self._db.transact(release)

    async def record_delivery_attempt(
        self, delivery: ClaimedDelivery, result: AttemptResult, *, now: int, disable_after_ms: int
    ) -> None:
        """One attempt's log row, the delivery's new state and the subscription's health."""

        def record(conn: Conn) -> None:
            conn.execute(
                """INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, status_code,
                       response_head, error, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    delivery.id,
                    delivery.attempt,
                    result.started_at,
                    result.duration_ms,
                    result.status_code,
                    result.response_head,
                    result.error,
                    result.retry_at,
                ),
            )
            if result.delivered:
                status, next_at = "delivered", None
            elif result.retry_at is not None and not result.disable_subscription:
                status, next_at = "pending", result.retry_at
            else:
                status, next_at = "failed", None
            conn.execute(
                """UPDATE deliveries SET status = ?, next_attempt_at = ?, lease_until = 0, last_status = ?,
                       last_error = ?, manual = 0, delivered_at = ? WHERE id = ? AND status = 'pending'""",
                (
                    status,
                    next_at,
                    result.status_code,
                    result.error,
                    now if result.delivered else None,
                    delivery.id,
                ),
            )
            if delivery.subscription_id is None:
                return
            sub = _subscription(conn, self._db.rules, delivery.subscription_id)
            if sub is None or sub.status != "enabled":
                return
            if result.delivered:
                # Written only when it changes: every delivery to a healthy subscription writing
                # its row made each pair of overlapping deliveries (and the transactions fanning
                # events out, which read it) conflict on PostgreSQL, and one of them run again.
                if sub.failing_since is not None:
                    conn.execute("UPDATE subscriptions SET failing_since = NULL WHERE id = ?", (sub.id,))
                return
            failing_since = sub.failing_since or result.started_at
            conn.execute("UPDATE subscriptions SET failing_since = ? WHERE id = ?", (failing_since, sub.id))
            reason = result.disable_subscription
            if reason is None and now - failing_since >= disable_after_ms:
                reason = f"failing since {self._db.rules.timestamp(failing_since)}"
            if reason is not None:
                conn.execute(
                    "UPDATE subscriptions SET status = 'disabled', disabled_reason = ?, updated_at = ? "
                    "WHERE id = ?",
                    (reason, now, sub.id),
                )
                conn.execute(
                    "UPDATE deliveries SET status = 'cancelled', last_error = ? "
                    "WHERE subscription_id = ? AND status = 'pending' AND id != ?",
                    ("subscription disabled", sub.id, delivery.id),
                )
                emit_system_event(
                    conn,
                    "subscription.disabled",
                    {"subscription_id": sub.id, "url": sub.url, "reason": reason},
                    now=now,
                    rules=self._db.rules,
                )

        # Only a failed attempt can disable the subscription, and so write an event.
        await self._db.transact(record, appends_events=not result.delivered)

    async def redeliver(
        self, delivery_id: str, *, now: int
    ) -> tuple[DeliveryRecord, list[DeliveryAttemptRecord]] | None:
        """Send one delivery again now, as a manual attempt (not retried if it fails)."""

        def redeliver(conn: Conn) -> tuple[DeliveryRecord, list[DeliveryAttemptRecord]] | None:
            cursor = conn.execute(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, lease_until = 0, manual = 1 "
                "WHERE id = ?",
                (now, delivery_id),
            )
            if cursor.rowcount == 0:
                return None
            delivery = _delivery(conn, delivery_id)
            assert delivery is not None
            return delivery, _delivery_attempts(conn, delivery_id)

        return await self._db.transact(redeliver)

    async def recover(self, subscription_id: str, *, since: int, now: int) -> int:
        """Resend every delivery to a subscription that failed since `since`; how many."""

        def recover(conn: Conn) -> int:
            cursor = conn.execute(
                """UPDATE deliveries SET status = 'pending', next_attempt_at = ?, lease_until = 0, manual = 1
                   WHERE subscription_id = ? AND status IN ('failed', 'cancelled') AND created_at >= ?""",
                (now, subscription_id, since),
            )
            return int(cursor.rowcount)

        return await self._db.transact(recover)

    async def list_deliveries(
        self, *, subscription_id: str | None = None, job_id: str | None = None, limit: int = 100
    ) -> list[tuple[DeliveryRecord, list[DeliveryAttemptRecord]]]:
        where = "d.subscription_id = ?" if subscription_id else "d.job_id = ?"
        value = subscription_id or job_id
        sql = _DELIVERIES_SQL.replace("{where}", where)

        def list_them(conn: Conn) -> list[tuple[DeliveryRecord, list[DeliveryAttemptRecord]]]:
            rows = conn.execute(sql, (value, limit)).fetchall()
            return [(DeliveryRecord.from_row(row), _delivery_attempts(conn, row["id"])) for row in rows]

        return await self._db.query(list_them)

    async def unfinished_for_job(self, job_id: str, *, now: int) -> int:
        """How many of the job's pending deliveries are being sent (leased) or due now."""
        row = await self._db.query(lambda conn: conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE job_id = ? AND status = 'pending' "
            "AND (lease_until > ? OR next_attempt_at <= ?)", (job_id, now, now)).fetchone())
        return int(row[0])

    async def count_failing(self, *, since: int) -> dict[str, int]:
        """Deliveries not getting through: `retrying` (pending after a failed attempt) and `failed`
        (no further automatic try), of those created since `since`."""
        rows = await self._db.query(lambda conn: conn.execute(
            """SELECT status, COUNT(*) FROM deliveries
               WHERE ((status = 'pending' AND attempts > 0) OR status = 'failed') AND created_at >= ?
               GROUP BY status""", (since,)).fetchall())
        found = {row[0]: int(row[1]) for row in rows}
        return {"retrying": found.get("pending", 0), "failed": found.get("failed", 0)}

    async def count_due_deliveries(self, *, now: int) -> int:
        """Pending deliveries due now and not leased."""
        row = await self._db.query(lambda conn: conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ? "
            "AND lease_until <= ?", (now, now)).fetchone())
        return int(row[0]) if row else 0

    async def pending_delivery_due(self, *, now: int, exclude: Sequence[str] = ()) -> int | None:
        """When the next pending delivery falls due, leaving out destinations in `exclude`
        (those at their in-flight cap: a freed slot wakes the notifier, so waiting on their
        already-due rows would only make it spin).

        A delivery can be sent from MAX(next_attempt_at, lease_until); the earliest is the least
        of three index ranges (migration 9), not a MIN over every pending delivery (a dead
        destination's backlog of retries included): those due and not leased, the first not
        leased falling due later, and the leased ones (in flight, so few)."""
        not_excluded = f"AND {_DESTINATION} NOT IN ({','.join('?' * len(exclude))})" if exclude else ""
        sendable = ("SELECT MIN(CASE WHEN next_attempt_at > lease_until THEN next_attempt_at "
                    "ELSE lease_until END)")
        looks = (
            (f"{sendable} FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ? "
             f"AND +lease_until <= ? {not_excluded}", (now, now)),
            ("SELECT next_attempt_at FROM deliveries WHERE status = 'pending' AND next_attempt_at > ? "  # noqa: S608
             f"AND +lease_until <= ? {not_excluded} ORDER BY next_attempt_at LIMIT 1", (now, now)),
            (f"{sendable} FROM deliveries WHERE status = 'pending' AND lease_until > ? {not_excluded}",
             (now,)),
        )

        def look(conn: Conn) -> int | None:
            # All sent before any is read: on PostgreSQL (pipelined) one round trip for the three.
            sent = [conn.execute(sql, (*params, *exclude)) for sql, params in looks]
            found = [cursor.fetchone() for cursor in sent]
            return min((row[0] for row in found if row is not None and row[0] is not None), default=None)

        return await self._db.query(look)


class EventStore:
    """The event log, read in order by the event stream."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def latest_event_seq(self) -> int:
        row = await self._db.query(lambda conn: conn.execute("SELECT MAX(seq) FROM events").fetchone())
        return int(row[0]) if row and row[0] is not None else 0

    async def list_events(
        self, *, after: int, job_id: str | None = None, types: Sequence[str] = (), limit: int = 100
    ) -> list[EventRecord]:
        clauses: list[str] = ["seq > ?"]
        params: list[object] = [after]
        if job_id:
            clauses.append("job_id = ?")
            params.append(job_id)
        if types:
            # With a job, its events are the range to read (events_of_job): `type || ''` keeps
            # the planner from walking every event of the types instead (events_of_type).
            column = "type || ''" if job_id else "type"
            clauses.append(f"{column} IN ({','.join('?' * len(types))})")
            params.extend(types)
        # Both filters read an index in log order from the cursor on (migration 9).
        sql = f"SELECT * FROM events WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT ?"  # noqa: S608
        rows = await self._db.query(lambda conn: conn.execute(sql, [*params, limit]).fetchall())
        return [EventRecord.from_row(r) for r in rows]


_DELIVERIES_SQL = """SELECT d.*, e.id AS event_id, e.type AS event_type FROM deliveries d
    JOIN events e ON e.seq = d.event_seq WHERE {where} ORDER BY d.created_at DESC, d.id DESC LIMIT ?"""


_DESTINATION = "COALESCE(subscription_id, url)"  # destination_key, in SQL over deliveries

# A delivery with what sending it takes: its event, its subscription's URL and secrets, and when
# its job ended (for the metrics; a LEFT JOIN on the key, so no read of its own afterwards).
_CLAIMED_COLUMNS = """SELECT d.*, e.id AS event_id, e.type AS event_type, e.body AS body,
        s.url AS sub_url, s.secret AS secret, s.previous_secret AS previous_secret,
        s.previous_secret_until AS previous_until, s.status AS sub_status,
        j.completed_at AS job_completed_at
    FROM deliveries d JOIN events e ON e.seq = d.event_seq
    LEFT JOIN subscriptions s ON s.id = d.subscription_id
    LEFT JOIN jobs j ON j.id = d.job_id"""


def _claimed(row: Row, url: str, now: int, *, attempt: int | None = None,
             lease_until: int | None = None) -> ClaimedDelivery:
    """The delivery a claimed row (`_CLAIMED_COLUMNS`) names, to send to `url`; by default
    with the attempt and lease the row already holds."""
    live = []
    if row["secret"]:
        live.append(row["secret"])
        if row["previous_secret"] and (row["previous_until"] or 0) > now:
            live.append(row["previous_secret"])
    return ClaimedDelivery(
        id=row["id"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        body=row["body"],
        url=url,
        subscription_id=row["subscription_id"],
        job_id=row["job_id"],
        attempt=attempt if attempt is not None else row["attempts"],
        manual=bool(row["manual"]),
        secrets=tuple(live),
        lease_until=lease_until if lease_until is not None else row["lease_until"],
        job_completed_at=row["job_completed_at"],
    )


# Transaction bodies' shared reads (they run inside `Database.transact` or `Database.query`) ----


def _subscription(conn: Conn, rules: JobRules, sub_id: str) -> SubscriptionRecord | None:
    row = conn.execute("SELECT * FROM subscriptions WHERE id = ?", (sub_id,)).fetchone()
    return SubscriptionRecord.from_row(row, rules.decode) if row else None


def _delivery(conn: Conn, delivery_id: str) -> DeliveryRecord | None:
    row = conn.execute(
        """SELECT d.*, e.id AS event_id, e.type AS event_type FROM deliveries d
           JOIN events e ON e.seq = d.event_seq WHERE d.id = ?""",
        (delivery_id,),
    ).fetchone()
    return DeliveryRecord.from_row(row) if row else None


def _delivery_attempts(conn: Conn, delivery_id: str) -> list[DeliveryAttemptRecord]:
    rows = conn.execute(
        "SELECT * FROM delivery_attempts WHERE delivery_id = ? ORDER BY id", (delivery_id,)
    ).fetchall()
    return [DeliveryAttemptRecord.from_row(r) for r in rows]
