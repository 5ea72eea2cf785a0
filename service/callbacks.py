"""Inbound provider callbacks: verify and record durably, acknowledge, then apply at once.

The request path does only what must happen before the provider gets its 2xx: the token (the
handler), the signature over the raw bytes with the job's own secret, the body's shape, that it
is about this job, and one small durable write: the raw callback, in `callbacks` and in the
inbox, its commit shared with the callbacks arriving at the same moment (storage/sql/group.py).
Applying it to its job (the state machine, its event, the tasks it causes) happens right after,
off the request path: an applier (`apply_forever`) woken by the recorded callback applies
whatever the inbox holds in one transaction that also empties it. In `fluxhook serve` with its
workers that is the same process's applier; beside `serve --no-workers` it is a `fluxhook
worker`'s, which the commit wakes (the web's own applier only looks now and then for what no
worker applied). So a callback is applied exactly once whatever crashes: recorded and not
applied, it stays in the inbox for the next applier (any process's, or a tick); half applied,
its transaction never committed. In serverless mode the request applies its own job's
callbacks before it goes on to finish the job inline (handlers/callbacks.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from functools import partial
from typing import cast

import anyio

from service.adoption import TaskRole, classify_task
from service.context import WorkContext
from service.crash_points import crash_point
from service.errors import CallbackRejected
from service.jobs import Source
from service.providers.base import AccountSigned, Adapter, JobSigned, StatusReport
from service.reports import observe
from service.signing import Verdict
from service.tokens import CallbackTarget
from storage.errors import UnknownJob
from storage.records import (
    AttemptRecord,
    CallbackJob,
    InboxCallback,
    JobRecord,
    Judgement,
    ReceivedCallback,
    Schedule,
)

log = logging.getLogger("fluxhook.callbacks")

# At most this many recorded callbacks are applied in one transaction: under load the inbox is
# emptied in a few large commits, and no one transaction holds the writer long.
APPLY_BATCH = 256
# Under load (its last batch held at least APPLY_BUSY callbacks), the applier pauses this long
# (seconds) before its next look, so that each transaction applies more callbacks: fewer commits
# and pages written per callback (~10% less CPU per callback under a steady load, a few tens of
# milliseconds more before each is applied), the writer left to the recording commits meanwhile.
# A callback arriving alone is applied at once.
APPLY_BUSY = 8
APPLY_PAUSE = 0.03


async def ingest_callback(
    ctx: WorkContext,
    target: CallbackTarget,
    headers: Mapping[str, str],
    body: bytes,
    *,
    verdict: Verdict | None = None,
) -> ReceivedCallback:
    """Record one callback for the job its (already verified) token names; returns once it is
    durable, before it is applied.

    The signature is checked over the raw bytes, with the job's own secret, before any parsing,
    unless `verdict` says how the sender was already verified (a check that must be awaited
    before the store is touched). Forged, malformed and wrong-job callbacks raise
    CallbackRejected and change nothing.
    """
    adapter = ctx.adapters.get(target.provider)
    if adapter is None:
        raise CallbackRejected(f"provider {target.provider!r} is not configured",
                               code="unknown_provider", status_code=404)
    # Account-signed providers (a documented scheme with a timestamp) are verified before the
    # store is touched: a missing or wrong signature is refused, never taken as a hint.
    if verdict is None and _signing(adapter) is AccountSigned:
        await ctx.keyring.verify(cast(AccountSigned, adapter), headers, body, client=ctx.client,
                                 now_ms=ctx.clock(), timeout=ctx.settings.http_timeout_s)
        verdict = Verdict.VERIFIED

    parsed: list[StatusReport] = []  # the report `judge` parsed, kept for the applier

    def judge(job: CallbackJob, attempts: Iterable[AttemptRecord]) -> Judgement:
        checked = verdict or _with_job_secret(adapter, headers, body, job.webhook_secret)
        report = adapter.parse_callback(body)
        parsed.append(report)
        task = report.provider_job_id
        role = classify_task(task, current=job.provider_job_id, provider=target.provider,
                             attempts=attempts, verified=checked is Verdict.VERIFIED)
        if role is TaskRole.FOREIGN:
            raise _wrong_job()
        return Judgement(checked.value, report.state.value, role=role, task=task)

    try:
        received = await ctx.store.jobs.record_callback(
            target.job_id, provider=target.provider, body=body, judge=judge, now=ctx.clock())
    except UnknownJob as exc:
        raise CallbackRejected("callback token names no job here", code="unknown_job",
                               status_code=403) from exc
    crash_point(ctx.settings, "callback.recorded")
    if parsed and not received.duplicate:  # a duplicate is never applied
        ctx.parsed_callbacks.keep(target.provider, body, parsed[-1])
    ctx.signals.callbacks.fire()
    return received


async def apply_recorded(ctx: WorkContext, *, job_id: str | None = None, limit: int = APPLY_BATCH) -> int:
    """Apply up to `limit` recorded callbacks (only `job_id`'s when given) to their jobs, in one
    transaction; how many were taken out of the inbox."""
    now = ctx.clock()
    crashing = "callback.applying" in ctx.settings.crash_at
    worker = ctx.task_handoff if job_id is None else None
    lease = worker.offer(now) if worker is not None else None
    # The downloads this leases to the worker start as soon as the transaction knows them,
    # beside the rest of it (service/early_downloads.py).
    early = ctx.early_downloads.starts(ctx) if lease is not None else None
    try:
        applied = await ctx.store.jobs.apply_callbacks(
            interpret=partial(_interpret, ctx), now=now, limit=limit, job_id=job_id,
            schedule=Schedule(fetch_at=now, poll_at=now + ctx.ms(ctx.settings.poll_grace_s)),
            applied=(lambda _: crash_point(ctx.settings, "callback.applying")) if crashing else None,
            lease=lease, downloading=early,
        )
    except BaseException:
        if early is not None:
            ctx.early_downloads.cancel(early.job_ids)
        raise
    work_due = applied.work_due
    taken: set[str] = set()
    if applied.leased:
        # Committed and leased to this process's worker, not yet started: dying here, they
        # wait out the lease and any worker claims them then (tests/test_crash_callbacks.py).
        crash_point(ctx.settings, "download.leased")
        if worker is None or not worker.take(applied.leased):  # it stopped meanwhile
            await ctx.store.tasks.release_tasks([(task.id, task.lease_until) for task in applied.leased])
            work_due = True
        else:
            taken = {task.job_id for task in applied.leased}
    if early is not None:
        ctx.early_downloads.cancel(early.job_ids - taken)  # no task here will take them
    outcomes = applied.outcomes
    for outcome in outcomes:
        callback = outcome.callback
        if outcome.refused is not None:
            log.warning("job %s: recorded callback %d not applied: %s", callback.job_id,
                        callback.callback_id, outcome.refused)
        elif outcome.recorded is not None:
            log.info("job %s: %s callback applied", callback.job_id, callback.verdict)
            ctx.metrics.job_recorded(outcome.recorded, provider=callback.provider)
    if outcomes:
        # Only the loops with something to do now: a download handed over needs no wake-up.
        if applied.deliveries_made:
            ctx.signals.deliveries.fire()
        if work_due:
            ctx.signals.work.fire()
        ctx.signals.events.fire()
    return len(outcomes)


async def apply_all(ctx: WorkContext, *, job_id: str | None = None) -> int:
    """Apply every recorded callback (only `job_id`'s when given) until the inbox has none."""
    total = 0
    while taken := await apply_recorded(ctx, job_id=job_id):
        total += taken
    return total


async def apply_forever(ctx: WorkContext, stop: anyio.Event, *, eager: bool = True) -> None:
    """The applier: until `stop`, apply what the inbox holds as soon as a callback is recorded
    (and every FLUXHOOK_WORKER_IDLE_SECONDS, for what another process recorded or a crash left).
    A failed transaction is logged and tried again at the next look.

    Not `eager` (a web process without workers, `serve --no-workers`): only the looks every
    FLUXHOOK_WORKER_IDLE_SECONDS, for callbacks no worker has applied. A recorded callback
    wakes the workers (their appliers are eager), and a worker that applies it leases the
    download it causes to itself in the same transaction: no claim, no second wake-up.

    A look that nothing woke (the idle interval ran out) reads whether the inbox holds anything
    before it applies: applying is a write transaction that takes the event log's lock first
    (on PostgreSQL), which an empty inbox would have taken for nothing, in the way of the
    transactions that write events."""
    wait = ctx.settings.worker_idle_s
    idle = False  # the first look, at start, applies what a crash or another process left
    async with anyio.create_task_group() as group:
        group.start_soon(_cancel_on, stop, group.cancel_scope)
        while not stop.is_set():
            # Taken first: a callback recorded after is seen.
            woken = ctx.signals.callbacks.current() if eager else anyio.Event()
            taken = 0
            try:
                # A full batch may have left more; a short one took all there was when it
                # looked, and whatever was recorded since has set `woken`: no look in between.
                if (not idle or await ctx.store.jobs.callbacks_waiting()) \
                        and (taken := await apply_recorded(ctx)) == APPLY_BATCH:
                    continue
            except Exception:
                log.exception("applying recorded callbacks failed; they stay in the inbox")
            with anyio.move_on_after(wait):
                await woken.wait()
            idle = not woken.is_set()
            if taken >= APPLY_BUSY:
                await anyio.sleep(APPLY_PAUSE)
        group.cancel_scope.cancel()


async def _cancel_on(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    # Between two transactions, waiting: nothing in flight to finish (a transaction runs to its
    # end once started, storage/sqlite/database.py), so stopping is cancelling the wait.
    await stop.wait()
    scope.cancel()


def _interpret(
    ctx: WorkContext, callback: InboxCallback, job: JobRecord, attempts: Iterable[AttemptRecord]
) -> Judgement:
    """What a recorded callback means for its job as it is now (pure: runs in the database
    thread, inside the applying transaction). Its sender was verified when it was received."""
    adapter = ctx.adapters.get(callback.provider)
    if adapter is None:
        raise CallbackRejected(f"provider {callback.provider!r} is no longer configured",
                               code="unknown_provider", status_code=404)
    # Parsed when it was recorded, in this process (unless long ago): not parsed again.
    report = (ctx.parsed_callbacks.take(callback.provider, callback.body)
              or adapter.parse_callback(callback.body))
    verified = callback.verdict == Verdict.VERIFIED.value
    task = report.provider_job_id
    # Judged again: a submit's answer committed since it was received may have changed which
    # task is the job's own.
    role = classify_task(task, current=job.provider_job_id, provider=callback.provider,
                         attempts=attempts, verified=verified)
    if role is TaskRole.FOREIGN:
        raise _wrong_job()
    if not verified:
        return Judgement(callback.verdict, report.state.value, confirm_at=callback.received_at, role=role,
                         task=task)
    observation = observe(report, source=Source.CALLBACK, submitted_at=job.submitted_at,
                          now=callback.received_at, not_found_grace_ms=ctx.ms(ctx.settings.not_found_grace_s))
    return Judgement(callback.verdict, report.state.value, observation, role=role, task=task)


# How an adapter class's callbacks are signed: AccountSigned, JobSigned or neither (None). A
# runtime Protocol check looks up every member of the Protocol each time (~10 µs, on every
# callback); the members are the class's methods and properties, so one answer holds per class.
_SIGNING: dict[type, type | None] = {}


def _signing(adapter: Adapter) -> type | None:
    if type(adapter) not in _SIGNING:
        _SIGNING[type(adapter)] = next(
            (protocol for protocol in (AccountSigned, JobSigned) if isinstance(adapter, protocol)), None)
    return _SIGNING[type(adapter)]


def _with_job_secret(
    adapter: Adapter, headers: Mapping[str, str], body: bytes, secret: str | None
) -> Verdict:
    if _signing(adapter) is not JobSigned:  # no way to check it: nothing is taken on trust
        raise CallbackRejected(f"{adapter.name} callbacks cannot be verified with a job's secret",
                               code="bad_signature")
    return cast(JobSigned, adapter).verify_callback(headers, body, secret)


def _wrong_job() -> CallbackRejected:
    return CallbackRejected("callback is about another job than its token names",
                            code="wrong_job", status_code=403)

