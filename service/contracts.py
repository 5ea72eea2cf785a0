"""The contracts service/ holds its storage to: one Protocol per store, and `Stores`, the set.

service/ (the workers, the handlers, `WorkContext`) depends on these, never on a backend.
storage/ implements them once (storage/sql/) over either backend (storage/sqlite/,
storage/postgres/), chosen by
`storage.open_database(url, ...)`; a backend raises storage errors only (storage/errors.py).
The value types (records, `Schedule`, `Judgement`, ...) are storage/records.py's; observations
are service/jobs.py's, which a backend hands to the rules it was opened with (storage/rules.py).
The blob store's contract is storage/blobs.py's `BlobStore` for now.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol

from service.jobs import Observation
from storage.records import (
    WAKE_KINDS,
    AppliedCallbacks,
    Attempt,
    AttemptRecord,
    AttemptResult,
    CallbackJob,
    CallbackRecord,
    ClaimedDelivery,
    DeliveryAttemptRecord,
    DeliveryLease,
    DeliveryRecord,
    EventRecord,
    InboxCallback,
    JobRecord,
    Judgement,
    NewJob,
    OutputRecord,
    PollRecord,
    ReceivedCallback,
    Recorded,
    Schedule,
    StoredOutput,
    SubmitCaps,
    SubscriptionRecord,
    TaskLease,
    TaskOutcome,
    TaskRecord,
    UploadRecord,
)


class JobStore(Protocol):
    async def get_job(self, job_id: str) -> JobRecord | None:
        ...

    async def list_jobs(
        self, *, status: str | None, limit: int, before: tuple[int, str] | None, provider: str | None = None
    ) -> list[JobRecord]:
        """Newest first; `before` is the (created_at, id) of the last job already seen."""
        ...

    async def get_outputs(self, job_ids: Sequence[str]) -> dict[str, list[OutputRecord]]:
        ...

    async def get_output(self, job_id: str, index: int) -> OutputRecord | None:
        ...

    async def get_attempts(self, job_ids: Sequence[str]) -> dict[str, list[AttemptRecord]]:
        ...

    async def get_callbacks(self, job_id: str) -> list[CallbackRecord]:
        """The job's callbacks as received and judged, oldest first (without their bodies)."""
        ...

    async def get_polls(self, job_id: str) -> list[PollRecord]:
        """The job's answered polls, oldest first."""
        ...

    async def record_thumbnail(self, job_id: str, index: int, thumb_sha256: str, *, now: int) -> bool:
        """Keep an output's thumbnail (an image already in the blob store), unless the output has one
        or the job's outputs were removed meanwhile (then the image is queued for removal). Whether
        it was kept."""
        ...

    async def create_job(self, new: NewJob, *, now: int) -> tuple[JobRecord, bool]:
        """Store a queued job and its submit task; an Idempotency-Key replay returns the original."""
        ...

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
        ...

    async def record_callback(
        self,
        job_id: str,
        *,
        provider: str,
        body: bytes,
        judge: Callable[[CallbackJob, Iterable[AttemptRecord]], Judgement],
        now: int,
    ) -> ReceivedCallback:
        """Judge a callback against its job and record it durably (in `callbacks`, and in the inbox
        unless it repeats one recorded before), sharing a commit with callbacks recorded at the same
        moment; `judge` may raise to refuse it, which then changes nothing. UnknownJob if no job."""
        ...

    async def pending_callbacks(self) -> int:
        """How many recorded callbacks wait in the inbox to be applied."""
        ...

    async def callbacks_waiting(self) -> bool:
        """Whether any recorded callback waits in the inbox: one index entry read at most."""
        ...

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
        """Apply recorded callbacks (oldest first, at most `limit`, only `job_id`'s when given) to
        their jobs and take them out of the inbox, in one transaction: each exactly once. With
        `lease`, the downloads made due are leased in it for the caller's worker. `downloading`
        (job id, provider, output URLs) is called inside the transaction, before its writes, for
        each callback that makes a job's download due: it may start early (nothing it does is
        undone if the transaction is not committed)."""
        ...

    async def named_tasks(self, job_id: str, provider: str) -> list[str]:
        """Provider tasks that unsigned callbacks for this job named, oldest first (a task a poll refuted
        is never named again)."""
        ...

    async def refute_task(self, job_id: str, task: str) -> None:
        """A task an unsigned callback named that the provider does not know: a forgery, never polled
        again."""
        ...

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
        """A task a hint named, confirmed by polling it: the job adopts it, or records it as an orphan when
        the job already has a task of its own (service/adoption.py)."""
        ...

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
        with `lease`, the deliveries this makes are leased in it for the caller's notifier."""
        ...

    async def begin_submit(
        self, job_id: str, provider: str, *, now: int, reuse: int | None = None
    ) -> int | None:
        """Write the submit down as `unknown` before it goes out, so a crash or a lost answer leaves a
        trace (service/adoption.py); its attempt id, or None when the job is no longer queued. `reuse`
        re-sends over an earlier attempt (an idempotent provider)."""
        ...

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
        """One submit's outcome: its attempt row (written over the `unknown` one `begin_submit` wrote, when
        given), the job's change (accepted, rejected, or moved to the next provider), and the submit
        task's end, in one transaction."""
        ...



class UploadStore(Protocol):
    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        ...

    async def record_upload(self, upload: UploadRecord) -> None:
        ...



class TaskStore(Protocol):
    """The tasks workers carry out."""

    async def next_due_at(self, *, now: int, caps: SubmitCaps = SubmitCaps()) -> int | None:
        """When the earliest task becomes claimable: due, not leased, and (for a submit) with room at its
        provider. A provider at its cap has room again only when one of its jobs ends, which commits and
        wakes the workers, or when a claimed submit's lease runs out."""
        ...

    async def get_tasks(self, job_id: str) -> list[TaskRecord]:
        ...

    async def count_tasks(self, *, most: int | None = None) -> dict[str, int]:
        """Per kind, the tasks waiting; with `most`, submits counted up to `most`, and polls
        and downloads up to `most` together, at a cost that does not grow with the backlog."""
        ...

    async def count_active(self, provider: str, *, now: int) -> int:
        """Jobs active at `provider`: claimed submits, and jobs sent without a final word."""
        ...

    async def claim_due_tasks(
        self, *, now: int, limit: int, lease_ms: int, caps: SubmitCaps = SubmitCaps()
    ) -> list[TaskRecord]:
        """Lease up to `limit` due tasks, earliest due first, keeping submits within `caps`. The attempt is
        counted now, so a crash uses up a try."""
        ...

    async def claim_job_tasks(
        self, job_id: str, *, now: int, limit: int, lease_ms: int, caps: SubmitCaps = SubmitCaps()
    ) -> list[TaskRecord]:
        """Lease up to `limit` of one job's due tasks as `claim_due_tasks` would (a submit only with room
        under `caps`): what a request that caused them runs before answering (service/inline.py)."""
        ...

    async def count_due(self, *, now: int) -> dict[str, int]:
        """Per kind, the tasks due now and not leased."""
        ...

    async def unfinished_for_job(self, job_id: str, *, now: int) -> int:
        """How many of the job's tasks are being carried out (leased) or due now; a submit only when
        leased (one that is due may be waiting for room under its provider's cap)."""
        ...

    async def release_tasks(self, leases: Sequence[tuple[int, int]]) -> int:
        """Hand back tasks this process leased but did not finish (it is stopping): due again at once for
        any worker, and the interrupted run is not counted as an attempt. Each is `(task id, lease_until
        as claimed)`; a task whose lease is no longer that one (it was finished or rescheduled, or the
        lease ran out and another worker holds it) is left alone. How many were handed back."""
        ...

    async def retry_task(self, task_id: int, *, due_at: int, error: str) -> None:
        ...

    async def finish_task(self, task_id: int) -> None:
        ...



class SubscriptionStore(Protocol):
    """Notification subscriptions: where events go."""

    async def create_subscription(self, sub: SubscriptionRecord) -> SubscriptionRecord:
        ...

    async def get_subscription(self, sub_id: str) -> SubscriptionRecord | None:
        ...

    async def list_subscriptions(self) -> list[SubscriptionRecord]:
        ...

    async def update_subscription(
        self, sub_id: str, changes: Mapping[str, Any], *, now: int
    ) -> SubscriptionRecord | None:
        """Apply `changes` (url, events, description, status); enabling clears the failure clock."""
        ...

    async def delete_subscription(self, sub_id: str, *, now: int) -> bool:
        ...

    async def rotate_subscription_secret(
        self, sub_id: str, new_secret: str, *, now: int, grace_ms: int
    ) -> SubscriptionRecord | None:
        """The old secret keeps signing beside the new one until `now + grace_ms`."""
        ...



class DeliveryStore(Protocol):
    """Deliveries: one per event and destination, leased, attempted, retried."""

    async def claim_due_deliveries(
        self, *, now: int, limit: int, lease_ms: int, busy: Mapping[str, int], per_destination: int,
        job_id: str | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease due deliveries, at most `per_destination` in flight per destination; with `job_id`, only
        that job's."""
        ...

    async def count_due_deliveries(self, *, now: int) -> int:
        """Pending deliveries due now and not leased."""
        ...

    async def count_failing(self, *, since: int) -> dict[str, int]:
        """Of the deliveries created since `since`: `retrying` (pending after a failed attempt)
        and `failed` (no further automatic try)."""
        ...

    async def unfinished_for_job(self, job_id: str, *, now: int) -> int:
        """How many of the job's pending deliveries are being sent (leased) or due now."""
        ...

    async def release_deliveries(self, leases: Sequence[tuple[str, int]]) -> int:
        """Hand back deliveries this process leased but did not attempt to the end (it is stopping): due
        again at once, and the interrupted try is not counted. A lease that is no longer the one given
        by the claim (the attempt was recorded, or the lease ran out and another process holds it) is
        left alone. How many were handed back."""
        ...

    async def record_delivery_attempt(
        self, delivery: ClaimedDelivery, result: AttemptResult, *, now: int, disable_after_ms: int
    ) -> None:
        """One attempt's log row, the delivery's new state and the subscription's health."""
        ...

    async def redeliver(
        self, delivery_id: str, *, now: int
    ) -> tuple[DeliveryRecord, list[DeliveryAttemptRecord]] | None:
        """Send one delivery again now, as a manual attempt (not retried if it fails)."""
        ...

    async def recover(self, subscription_id: str, *, since: int, now: int) -> int:
        """Resend every delivery to a subscription that failed since `since`; how many."""
        ...

    async def list_deliveries(
        self, *, subscription_id: str | None = None, job_id: str | None = None, limit: int = 100
    ) -> list[tuple[DeliveryRecord, list[DeliveryAttemptRecord]]]:
        ...

    async def pending_delivery_due(self, *, now: int, exclude: Sequence[str] = ()) -> int | None:
        """When the next pending delivery falls due, leaving out destinations in `exclude` (those at their
        in-flight cap: a freed slot wakes the notifier, so waiting on their already-due rows would only
        make it spin)."""
        ...



class EventStore(Protocol):
    """The event log, read in order by the event stream."""

    async def latest_event_seq(self) -> int:
        ...

    async def list_events(
        self, *, after: int, job_id: str | None = None, types: Sequence[str] = (), limit: int = 100
    ) -> list[EventRecord]:
        ...



class RetentionStore(Protocol):
    """Removal and pruning, in short batches."""

    async def remove_job_outputs(self, job_id: str, *, now: int) -> JobRecord | None:
        """Mark a final job's outputs removed and queue its images; the job otherwise stays as it is
        (attempts, events, callbacks). A job not final, or already removed, is unchanged. None if there
        is no such job."""
        ...

    async def remove_old_outputs(self, *, completed_before: int, now: int, limit: int) -> int:
        """Remove the outputs of up to `limit` final jobs completed before `completed_before` (as
        `remove_job_outputs` does); how many jobs."""
        ...

    async def unreferenced_blobs(
        self, *, after: str, now: int, limit: int, only: Sequence[str] | None = None
    ) -> tuple[list[str], str | None]:
        """Look at up to `limit` queued images (sha256 order, from after `after`): forget those a job whose
        outputs are kept references (removing that job's outputs queues them again), keep queued those
        only an upload not yet expired references (looked at again next time), and name the rest, whose
        files may go. Also the last sha256 looked at (None when there were no more), to carry on from.
        `only` limits the look to those images."""
        ...

    async def forget_blobs(self, sha256s: Sequence[str]) -> None:
        """The files of these queued images are gone: take them off the queue."""
        ...

    async def prune_events(self, *, before: int, limit: int) -> int:
        """Delete up to `limit` events created before `before` that no delivery still has to send, with
        their deliveries and the deliveries' attempts; how many events."""
        ...

    async def prune_callbacks(self, *, before: int, limit: int) -> int:
        """Delete up to `limit` received callbacks (their raw bodies) older than `before`."""
        ...

    async def prune_polls(self, *, before: int, limit: int) -> int:
        """Delete up to `limit` answered polls (a job's timeline) older than `before`."""
        ...

    async def prune_delivery_attempts(self, *, before: int, limit: int) -> int:
        """Delete up to `limit` delivery attempts started before `before` (the delivery keeps its count,
        last status and error)."""
        ...



class AddressStore(Protocol):
    """Store methods for the one announced public URL (its store)."""

    async def announce_address(self, public_url: str, *, owner: str, now: int) -> None:
        """Record `public_url` as the address to use; the latest announcement wins."""
        ...

    async def withdraw_address(self, *, owner: str) -> None:
        """Forget the announcement, unless another process has announced since."""
        ...

    async def announced_address(self) -> str | None:
        ...


class Stores(Protocol):
    """One database and the stores composed over it (storage/sqlite/ and storage/postgres/
    database.py `Database`)."""

    @property
    def jobs(self) -> JobStore: ...
    @property
    def uploads(self) -> UploadStore: ...
    @property
    def tasks(self) -> TaskStore: ...
    @property
    def subscriptions(self) -> SubscriptionStore: ...
    @property
    def deliveries(self) -> DeliveryStore: ...
    @property
    def events(self) -> EventStore: ...
    @property
    def retention(self) -> RetentionStore: ...
    @property
    def addresses(self) -> AddressStore: ...

    public_url: str  # the address the job documents in events carry (service/address.py)

    async def ping(self) -> bool:
        """Whether the database answers."""
        ...

    async def follow_wake_ups(self, wake: Callable[[str], None], kinds: Collection[str] = WAKE_KINDS) -> None:
        """Until cancelled, call `wake(kind)` for each of `kinds` ("work", "deliveries",
        "events", "callbacks") soon after any other process commits such work: on any host with
        PostgreSQL (LISTEN/NOTIFY), on this host with SQLite (its WAL file watched). What this
        process commits, it wakes its own loops for (`WorkContext.nudge`). A wake-up may be
        missed (a reconnect, a full queue), so the loops' idle looks stay as the safety net on
        every backend."""
        ...

    async def close(self) -> None: ...
