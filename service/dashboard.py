"""What the dashboard shows, read from the stores: pages of jobs, one job's timeline, the health
strip. The pages themselves are handlers/dashboard/'s; `timeline` is pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from service.context import WorkContext
from storage.records import (
    AttemptRecord,
    CallbackRecord,
    DeliveryAttemptRecord,
    DeliveryRecord,
    EventRecord,
    JobRecord,
    OutputRecord,
    PollRecord,
    SubscriptionRecord,
    TaskRecord,
)
from storage.state import TERMINAL, JobStatus

PAGE_SIZE = 50
FAILING_WINDOW_S = 24 * 3600  # "deliveries failing" counts those created in the last day
STATUSES = tuple(status.value for status in JobStatus)
Deliveries = list[tuple[DeliveryRecord, list[DeliveryAttemptRecord]]]


@dataclass(frozen=True)
class JobRow:
    job: JobRecord
    outputs: list[OutputRecord]


async def job_rows(
    ctx: WorkContext, *, status: str | None, provider: str | None, before: tuple[int, str] | None,
    limit: int = PAGE_SIZE,
) -> list[JobRow]:
    """Newest first, as `GET /v1/jobs` pages them, with each job's outputs."""
    jobs = await ctx.store.jobs.list_jobs(status=status, provider=provider, limit=limit, before=before)
    outputs = await ctx.store.jobs.get_outputs([job.id for job in jobs])
    return [JobRow(job, outputs[job.id]) for job in jobs]


async def job_row(ctx: WorkContext, job_id: str) -> JobRow | None:
    job = await ctx.store.jobs.get_job(job_id)
    if job is None:
        return None
    return JobRow(job, (await ctx.store.jobs.get_outputs([job_id]))[job_id])


# One job's timeline ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One thing that happened to a job (or is due to). `tone`: ok, bad, warn or info."""

    at: int
    kind: str  # created, submit, callback, poll, event, ready, stored, delivery, scheduled
    title: str
    detail: str = ""
    tone: str = "info"
    delivery_id: str | None = None  # a delivery's entry: what a redeliver button sends again
    last_of_delivery: bool = False  # the delivery's latest entry, which carries the button


@dataclass(frozen=True)
class JobPage:
    job: JobRecord
    outputs: list[OutputRecord]
    entries: list[Entry]
    deliveries: Deliveries = field(default_factory=list)

    @property
    def live(self) -> bool:
        """Whether more may still happen: the job is not final, or a delivery is still pending."""
        return self.job.status not in TERMINAL or any(d.status == "pending" for d, _ in self.deliveries)


async def job_page(ctx: WorkContext, job_id: str) -> JobPage | None:
    job = await ctx.store.jobs.get_job(job_id)
    if job is None:
        return None
    outputs = (await ctx.store.jobs.get_outputs([job_id]))[job_id]
    attempts = (await ctx.store.jobs.get_attempts([job_id]))[job_id]
    deliveries = await ctx.store.deliveries.list_deliveries(job_id=job_id)
    entries = timeline(
        job,
        outputs=outputs,
        attempts=attempts,
        callbacks=await ctx.store.jobs.get_callbacks(job_id),
        polls=await ctx.store.jobs.get_polls(job_id),
        events=await _all_events(ctx, job_id),
        deliveries=deliveries,
        tasks=await ctx.store.tasks.get_tasks(job_id),
    )
    return JobPage(job, outputs, entries, deliveries)


async def _all_events(ctx: WorkContext, job_id: str) -> list[EventRecord]:
    events: list[EventRecord] = []
    while True:
        batch = await ctx.store.events.list_events(after=events[-1].seq if events else 0, job_id=job_id,
                                                   limit=200)
        events.extend(batch)
        if len(batch) < 200:
            return events


_ATTEMPT_TONES = {"accepted": "ok", "rejected": "bad", "failed_over": "warn", "unavailable": "warn"}
_VERDICT_TONES = {"verified": "ok", "unsigned": "warn", "refuted": "bad"}
_EVENT_TONES = {"job.succeeded": "ok", "job.failed": "bad", "job.cancelled": "warn"}


def timeline(
    job: JobRecord,
    *,
    outputs: list[OutputRecord],
    attempts: list[AttemptRecord],
    callbacks: list[CallbackRecord],
    polls: list[PollRecord],
    events: list[EventRecord],
    deliveries: Deliveries,
    tasks: list[TaskRecord],
) -> list[Entry]:
    """Everything that happened to the job, oldest first, then the work still due: submit
    attempts per provider, callbacks with their verdicts, answered polls, state changes (the
    job's events), images stored, and every delivery attempt with its status and duration."""
    entries = [Entry(job.created_at, "created", "Job created",
                     f"{job.model}; providers {', '.join(job.candidates or (job.provider,))}")]
    for a in attempts:
        bits = [f"HTTP {a.http_status}" if a.http_status is not None else "",
                f"task {a.provider_job_id}" if a.provider_job_id else "", a.message or ""]
        entries.append(Entry(a.at, "submit", f"Submit to {a.provider}: {a.outcome}", _join(bits),
                             _ATTEMPT_TONES.get(a.outcome, "info")))
    for c in callbacks:
        bits = [f"reports {c.state}" if c.state else "",
                f"task {c.provider_job_id}" if c.provider_job_id else "", f"{c.bytes} bytes"]
        entries.append(Entry(c.received_at, "callback", f"Callback from {c.provider}: {c.verdict}",
                             _join(bits), _VERDICT_TONES.get(c.verdict, "bad")))
    for p in polls:
        progress = f"progress {round(p.progress * 100)}%" if p.progress is not None else ""
        entries.append(Entry(p.at, "poll", f"Poll {p.provider}: {p.status}", progress))
    for e in events:
        entries.append(Entry(e.created_at, "event", f"Event {e.type}", _event_detail(e),
                             _EVENT_TONES.get(e.type, "info")))
    if job.ready_at is not None:
        entries.append(Entry(job.ready_at, "ready", "Provider ready",
                             f"heard by {job.completion_source}" if job.completion_source else ""))
    if outputs:
        size = sum(o.bytes for o in outputs)
        entries.append(Entry(max(o.stored_at for o in outputs), "stored",
                             f"{len(outputs)} image{'s' if len(outputs) != 1 else ''} stored",
                             f"{_size(size)}; {', '.join(o.content_type for o in outputs)}", "ok"))
    for delivery, delivery_attempts in deliveries:
        entries.extend(_delivery_entries(delivery, delivery_attempts))
    entries.sort(key=lambda entry: entry.at)  # stable: same-moment entries keep the order above
    for task in sorted(tasks, key=lambda t: t.due_at):
        detail = _join([f"{task.attempts} tries" if task.attempts else "",
                        f"last error: {task.last_error}" if task.last_error else ""])
        entries.append(Entry(task.due_at, "scheduled", f"Next {task.kind} due", detail,
                             "warn" if task.last_error else "info"))
    return entries


def _delivery_entries(delivery: DeliveryRecord, attempts: list[DeliveryAttemptRecord]) -> list[Entry]:
    where = f"{delivery.event_type} to {delivery.url}"
    entries = [Entry(delivery.created_at, "delivery", "Delivery queued", where, delivery_id=delivery.id)]
    for a in attempts:
        answer = f"HTTP {a.status_code}" if a.status_code is not None else (a.error or "no answer")
        ok = a.status_code is not None and 200 <= a.status_code < 300
        said = a.error if a.error and a.status_code is not None and a.error != f"HTTP {a.status_code}" else ""
        detail = _join([where, f"{a.duration_ms} ms", said])
        entries.append(Entry(a.started_at, "delivery", f"Delivery attempt {a.attempt}: {answer}", detail,
                             "ok" if ok else "bad", delivery_id=delivery.id))
    last = entries[-1]
    outcome = "retrying" if delivery.status == "pending" and attempts else f"delivery {delivery.status}"
    entries[-1] = replace(last, last_of_delivery=True, detail=_join([last.detail, outcome]))
    return entries


def _event_detail(event: EventRecord) -> str:
    try:
        data = json.loads(event.body).get("data", {})
    except (ValueError, AttributeError):
        return event.id
    bits = [f"#{event.job_seq}" if event.job_seq is not None else ""]
    if isinstance(data, dict):
        if data.get("progress") is not None and event.type == "job.progress":
            bits.append(f"progress {round(float(data['progress']) * 100)}%")
        if data.get("completion_source"):
            bits.append(f"via {data['completion_source']}")
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            bits.append(str(error["message"]))
    return _join(bits)


def _join(bits: list[str]) -> str:
    return " · ".join(bit for bit in bits if bit)


def _size(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 1_000_000 else f"{n / 1000:.0f} kB"


# The health strip ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    due_tasks: dict[str, int]  # per kind, due now and not leased
    due_deliveries: int
    oldest_due_s: float | None  # how long the earliest claimable task has been due
    retrying: int  # deliveries pending after a failed attempt (last day)
    failed: int  # deliveries given up on (last day)
    disabled: list[SubscriptionRecord]

    @property
    def due_work(self) -> int:
        return sum(self.due_tasks.values()) + self.due_deliveries


async def health(ctx: WorkContext) -> Health:
    """What is waiting and what is failing, read as `/metrics`' gauges are (service/metrics.py)."""
    now = ctx.clock()
    due_at = await ctx.store.tasks.next_due_at(now=now)
    failing = await ctx.store.deliveries.count_failing(since=now - ctx.ms(FAILING_WINDOW_S))
    subscriptions = await ctx.store.subscriptions.list_subscriptions()
    return Health(
        due_tasks=await ctx.store.tasks.count_due(now=now),
        due_deliveries=await ctx.store.deliveries.count_due_deliveries(now=now),
        oldest_due_s=max(0, now - due_at) / 1000 if due_at is not None and due_at <= now else None,
        retrying=failing["retrying"],
        failed=failing["failed"],
        disabled=[s for s in subscriptions if s.status != "enabled"],
    )
