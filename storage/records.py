"""Rows as frozen dataclasses: what the store returns and the core reads."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from storage.state import JobState, JobStatus, TaskRole, Transition

# A JSON column's reader: the strict parser, from the store's rules (storage/rules.py).
Decode = Callable[[str], Any]


@dataclass(frozen=True)
class JobRecord:
    id: str
    provider: str
    model: str
    status: JobStatus
    input: dict[str, Any]
    metadata: dict[str, Any]
    provider_job_id: str | None
    polling_url: str | None
    webhook_secret: str | None
    output_urls: tuple[str, ...]
    error_code: str | None
    error_message: str | None
    completion_source: str | None
    progress: float | None
    idempotency_key: str | None
    request_hash: str | None
    created_at: int
    updated_at: int
    submitted_at: int | None
    ready_at: int | None
    completed_at: int | None
    deadline_at: int
    poll_count: int
    callback_count: int
    candidates: tuple[str, ...] = ()
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] = ()
    event_count: int = 0
    outputs_deleted_at: int | None = None  # its images were removed (DELETE or retention)

    def __repr__(self) -> str:  # the webhook secret never reaches a log line
        return f"JobRecord(id={self.id!r}, provider={self.provider!r}, status={self.status!r})"

    @property
    def state(self) -> JobState:
        return JobState(
            status=self.status,
            provider_job_id=self.provider_job_id,
            polling_url=self.polling_url,
            output_urls=self.output_urls,
            error_code=self.error_code,
            error_message=self.error_message,
            completion_source=self.completion_source,
            progress=self.progress,
        )

    @classmethod
    def from_row(cls, row: sqlite3.Row, loads: Decode) -> JobRecord:
        return cls(
            id=row["id"],
            provider=row["provider"],
            model=row["model"],
            status=JobStatus(row["status"]),
            input=loads(row["input"]),
            metadata=loads(row["metadata"]),
            provider_job_id=row["provider_job_id"],
            polling_url=row["polling_url"],
            webhook_secret=row["webhook_secret"],
            output_urls=tuple(loads(row["output_urls"])),
            error_code=row["error_code"],
            error_message=row["error_message"],
            completion_source=row["completion_source"],
            progress=row["progress"],
            idempotency_key=row["idempotency_key"],
            request_hash=row["request_hash"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            submitted_at=row["submitted_at"],
            ready_at=row["ready_at"],
            completed_at=row["completed_at"],
            deadline_at=row["deadline_at"],
            poll_count=row["poll_count"],
            callback_count=row["callback_count"],
            candidates=tuple(loads(row["candidates"])),
            webhook_url=row["webhook_url"],
            webhook_events=tuple(loads(row["webhook_events"])),
            event_count=row["event_count"],
            outputs_deleted_at=row["outputs_deleted_at"],
        )


@dataclass(frozen=True)
class OutputRecord:
    job_id: str
    index: int
    sha256: str
    content_type: str
    bytes: int
    source_url: str | None
    stored_at: int
    thumb_sha256: str | None = None  # its thumbnail in the blob store, once made (service/thumbnails.py)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> OutputRecord:
        return cls(row["job_id"], row["idx"], row["sha256"], row["content_type"], row["bytes"],
                   row["source_url"], row["stored_at"], row["thumb_sha256"])


@dataclass(frozen=True)
class TaskRecord:
    """One piece of due work: `kind` is submit, poll or fetch."""

    id: int
    job_id: str
    kind: str
    due_at: int
    attempts: int
    last_error: str | None
    lease_until: int = 0  # as leased by a claim: which lease to hand back (storage/sql/tasks.py)
    # Its job as the claim read it, for a task whose handler starts by reading it (a download):
    # one read fewer. Only as fresh as the claim; the handler's own write reads it again.
    job: JobRecord | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> TaskRecord:
        return cls(row["id"], row["job_id"], row["kind"], row["due_at"], row["attempts"],
                   row["last_error"], row["lease_until"])


@dataclass(frozen=True)
class NewJob:
    id: str
    provider: str
    model: str
    input: dict[str, Any]
    metadata: dict[str, Any]
    webhook_secret: str | None = field(repr=False)
    idempotency_key: str | None
    request_hash: str | None
    deadline_at: int
    candidates: tuple[str, ...] = ()
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttemptRecord:
    """One submit to one provider; `outcome` as in service/adoption.py."""

    provider: str
    outcome: str
    http_status: int | None
    message: str | None
    provider_job_id: str | None
    at: int
    id: int = 0

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> AttemptRecord:
        return cls(row["provider"], row["outcome"], row["http_status"], row["message"],
                   row["provider_job_id"], row["at"], row["id"])


@dataclass(frozen=True)
class CallbackRecord:
    """One provider callback as received and judged (its raw body stays in the store)."""

    id: int
    provider: str
    verdict: str  # verified, unsigned, refuted, ... (service/callbacks.py)
    state: str | None  # the provider state it reported
    provider_job_id: str | None
    bytes: int
    received_at: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> CallbackRecord:
        return cls(row["id"], row["provider"], row["verdict"], row["state"], row["provider_job_id"],
                   row["bytes"], row["received_at"])


@dataclass(frozen=True)
class PollRecord:
    """One answered status poll: the job's status once its answer was applied."""

    provider: str
    status: str
    progress: float | None
    at: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> PollRecord:
        return cls(row["provider"], row["status"], row["progress"], row["at"])


@dataclass(frozen=True)
class UploadRecord:
    id: str
    sha256: str
    content_type: str
    bytes: int
    created_at: int
    expires_at: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> UploadRecord:
        return cls(row["id"], row["sha256"], row["content_type"], row["bytes"], row["created_at"],
                   row["expires_at"])


@dataclass(frozen=True)
class SubscriptionRecord:
    id: str
    url: str
    events: tuple[str, ...]
    description: str | None
    secret: str
    previous_secret: str | None
    previous_secret_until: int | None
    status: str
    disabled_reason: str | None
    failing_since: int | None
    created_at: int
    updated_at: int

    def __repr__(self) -> str:  # secrets never reach a log line
        return f"SubscriptionRecord(id={self.id!r}, url={self.url!r}, status={self.status!r})"

    @classmethod
    def from_row(cls, row: sqlite3.Row, loads: Decode) -> SubscriptionRecord:
        return cls(row["id"], row["url"], tuple(loads(row["events"])), row["description"],
                   row["secret"], row["previous_secret"], row["previous_secret_until"], row["status"],
                   row["disabled_reason"], row["failing_since"], row["created_at"], row["updated_at"])


@dataclass(frozen=True)
class DeliveryRecord:
    id: str
    event_id: str
    event_type: str
    subscription_id: str | None
    job_id: str | None
    url: str
    status: str
    attempts: int
    next_attempt_at: int | None
    last_status: int | None
    last_error: str | None
    created_at: int
    delivered_at: int | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> DeliveryRecord:
        return cls(row["id"], row["event_id"], row["event_type"], row["subscription_id"], row["job_id"],
                   row["url"], row["status"], row["attempts"], row["next_attempt_at"], row["last_status"],
                   row["last_error"], row["created_at"], row["delivered_at"])


@dataclass(frozen=True)
class DeliveryAttemptRecord:
    attempt: int
    started_at: int
    duration_ms: int
    status_code: int | None
    response_head: str | None
    error: str | None
    next_attempt_at: int | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> DeliveryAttemptRecord:
        return cls(row["attempt"], row["started_at"], row["duration_ms"], row["status_code"],
                   row["response_head"], row["error"], row["next_attempt_at"])


@dataclass(frozen=True)
class EventRecord:
    seq: int
    id: str
    job_id: str | None
    job_seq: int | None
    type: str
    body: bytes
    created_at: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> EventRecord:
        return cls(row["seq"], row["id"], row["job_id"], row["job_seq"], row["type"], bytes(row["body"]),
                   row["created_at"])


# What a job store's writes take and return -------------------------------------------------------

# An observation (service/jobs.py): opaque here, read only by the rules' state machine.
Observation = Any


# What another process's commit can wake in this one (service/context.py `Signals`): new tasks
# for the worker, deliveries for the notifier, events for streams, callbacks for the applier.
WAKE_KINDS = ("work", "deliveries", "events", "callbacks")


class TaskKind(StrEnum):
    SUBMIT = "submit"
    POLL = "poll"
    FETCH = "fetch"


@dataclass(frozen=True)
class Schedule:
    """When the work a transition causes should run; the caller knows the settings."""

    poll_at: int | None = None
    fetch_at: int | None = None


@dataclass(frozen=True)
class TaskOutcome:
    """How the task that produced an observation ends: done, or due again at `retry_at`."""

    task_id: int
    retry_at: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Judgement:
    """What a callback proved: its verdict, the provider state it reports, and what to do."""

    verdict: str
    state: str | None
    observation: Observation | None = None
    confirm_at: int | None = None
    role: TaskRole = TaskRole.CURRENT  # which provider task it is about (service/adoption.py)
    task: str | None = None  # the provider task it names


@dataclass(frozen=True)
class Attempt:
    """What one submit to one provider came to; `outcome` is accepted, rejected,
    unavailable (will be retried) or failed_over (the next provider is tried)."""

    provider: str
    outcome: str
    http_status: int | None = None
    message: str | None = None
    provider_job_id: str | None = None


@dataclass(frozen=True)
class StoredOutput:
    index: int
    sha256: str
    content_type: str
    bytes: int
    source_url: str | None


@dataclass(frozen=True)
class Recorded:
    """The job after a write, and what the state machine made of the observation."""

    job: JobRecord
    transition: Transition | None = None
    duplicate: bool = False
    # Deliveries the write made and leased for the caller's own notifier (`DeliveryLease`).
    leased: tuple[ClaimedDelivery, ...] = ()


@dataclass(frozen=True)
class CallbackJob:
    """What a callback is judged against when it is received: the part of its job that says
    who may call back and about which provider task."""

    id: str
    provider: str
    status: JobStatus
    provider_job_id: str | None
    webhook_secret: str | None


@dataclass(frozen=True)
class ReceivedCallback:
    """A callback recorded (or found to be a byte-identical repeat of one recorded before), not
    yet applied: the job as it was when it was recorded, and what the callback was judged to be.
    Applying it is the inbox's business (storage/sql/jobs.py `apply_callbacks`)."""

    job: CallbackJob
    judgement: Judgement
    duplicate: bool


@dataclass(frozen=True)
class InboxCallback:
    """A recorded callback waiting in the inbox to be applied to its job."""

    callback_id: int
    job_id: str
    provider: str
    verdict: str  # as judged when it was received (storage/records.py Judgement.verdict)
    body: bytes
    received_at: int


@dataclass(frozen=True)
class AppliedCallback:
    """What applying one recorded callback came to: the job's write (None when the job is gone),
    or why it was not applied (`refused`: what interpreting it raised)."""

    callback: InboxCallback
    recorded: Recorded | None = None
    refused: Exception | None = None


# Tasks and notifications -----------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitCaps:
    """How many jobs may be active at once: per configured provider (None: no cap), and per
    (provider, model) below that. Jobs of providers not listed are never capped, and a job
    only overflows to a listed provider."""

    providers: Mapping[str, int | None] = field(default_factory=dict)
    models: Mapping[tuple[str, str], int] = field(default_factory=dict)


JOB_EVENT_TYPES = (
    "job.submitted",
    "job.running",
    "job.progress",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
)
EVENT_TYPES = (*JOB_EVENT_TYPES, "subscription.disabled")


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery leased for one attempt, with what is needed to send it."""

    id: str
    event_id: str
    event_type: str
    body: bytes
    url: str
    subscription_id: str | None
    job_id: str | None
    attempt: int
    manual: bool
    secrets: tuple[str, ...] = field(repr=False)  # the subscription's live secrets; empty: the service's
    lease_until: int = 0  # the lease this claim holds: what `release_deliveries` hands back
    job_completed_at: int | None = None  # when its job ended, if it has (for the metrics)


@dataclass(frozen=True)
class TaskLease:
    """A lease on the downloads a write makes due, taken in that write's own transaction for a
    worker running in the same process, which starts them without claiming them (and without
    waiting to be woken): at most `limit`, leased until `until` as a claim leases (the attempt
    counted). If the process dies first, the lease runs out and any worker claims them."""

    until: int
    limit: int


@dataclass(frozen=True)
class AppliedCallbacks:
    """What one applying transaction came to: each callback's outcome, the downloads it leased
    for this process's worker (`TaskLease`), and what else it left to do now: tasks due now
    that were not leased (`work_due`), and new deliveries (`deliveries_made`)."""

    outcomes: list[AppliedCallback]
    leased: tuple[TaskRecord, ...] = ()
    work_due: bool = False
    deliveries_made: bool = False


@dataclass(frozen=True)
class DeliveryLease:
    """A lease on the deliveries a write makes, taken in that write's own transaction for a
    notifier running in the same process, which sends them without claiming them (and without
    waiting to be woken): at most `limit`, none to a destination in `exclude` (those at their
    in-flight cap), leased until `until` as a claim leases (the attempt counted). If the process
    dies before they are sent, the lease runs out and any notifier claims them, as after a
    crash between a claim and its send."""

    until: int
    limit: int
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttemptResult:
    """What one delivery attempt came to. `retry_at` None means no further automatic try."""

    delivered: bool
    started_at: int
    duration_ms: int
    status_code: int | None
    response_head: str | None
    error: str | None
    retry_at: int | None
    disable_subscription: str | None = None  # a reason, e.g. "410 Gone"


def destination_key(subscription_id: str | None, url: str) -> str:
    return subscription_id or url


@dataclass(frozen=True)
class BlobContent:
    """A stored blob being read: its size, then its bytes in chunks (read once)."""

    size: int
    chunks: AsyncIterator[bytes]
