"""Submit a queued job to its provider, with a per-job webhook URL and secret, failing over to
the next candidate provider when the failure is one another provider could fix."""

from __future__ import annotations

import logging
from typing import Any

from service.adoption import plan_submit
from service.backoff import retry_delay
from service.context import WorkContext
from service.crash_points import crash_point
from service.errors import (
    InputUnavailable,
    ProviderError,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderRetryable,
)
from service.inline_images import inline_images
from service.jobs import ErrorCode, JobStatus, SubmitRejected, Submitted, TimedOut
from service.providers.base import SubmitOrder
from service.providers.transport import send
from storage.records import Attempt, JobRecord, Schedule, TaskOutcome, TaskRecord

log = logging.getLogger("fluxhook.submitter")

# "No credits" is permanent for one provider but another may have them: BFL and CometAPI say
# 402; RunComfy says HTTP 400 with error code 400002 InsufficientResources (providers.md §d.5).
_NO_CREDITS_MARKERS = ("400002", "insufficient", "credit", "balance", "quota")


def another_provider_could_fix(error: ProviderError) -> bool:
    """429, 5xx, timeouts and connection errors, and running out of credits."""
    if isinstance(error, ProviderRetryable):
        return True
    if error.status == 402:
        return True
    return error.status == 400 and any(m in error.message.lower() for m in _NO_CREDITS_MARKERS)


def next_candidate(job: JobRecord) -> str | None:
    candidates = list(job.candidates) or [job.provider]
    try:
        position = candidates.index(job.provider)
    except ValueError:
        return None
    return candidates[position + 1] if position + 1 < len(candidates) else None


async def submit_job(ctx: WorkContext, task: TaskRecord) -> None:
    job = await ctx.store.jobs.get_job(task.job_id)
    if job is None or job.status is not JobStatus.QUEUED:
        await ctx.store.tasks.finish_task(task.id)
        return
    adapter = ctx.adapters.get(job.provider)
    model = ctx.catalog.find(job.provider, job.model)
    if adapter is None or model is None:
        message = f"provider {job.provider!r} with model {job.model!r} is not configured"
        await _record_submit(ctx,
            job.id, Attempt(job.provider, "rejected", message=message), now=ctx.clock(),
            task=TaskOutcome(task.id), observation=SubmitRejected(message),
        )
        return
    if ctx.clock() >= job.deadline_at:
        # It waited in fluxhook (a provider at its cap, retries) past its deadline: sending it
        # now would pay for an image nobody waits for any more.
        ctx.metrics.job_recorded(await ctx.store.jobs.record_observation(
            job.id, TimedOut(f"not submitted within {ctx.settings.job_timeout_s:.0f}s"), now=ctx.clock(),
            task=TaskOutcome(task.id),
        ))
        return
    webhook = adapter.supports_webhooks
    attempts = (await ctx.store.jobs.get_attempts([job.id]))[job.id]
    plan = plan_submit(attempts, job.provider, now=ctx.clock(), window_ms=ctx.ms(ctx.settings.adopt_window_s),
                       calls_back=webhook, idempotent=adapter.submit_idempotent)
    if not plan.submit:
        assert plan.wait_until is not None
        # A submit went out and its answer never came: a provider task may exist. Its callback
        # adopts it; submitting again before the window is out could pay twice.
        log.info("job %s: a submit to %s may be in flight; waiting for its callback until %d",
                 job.id, job.provider, plan.wait_until)
        await ctx.store.tasks.retry_task(task.id, due_at=plan.wait_until,
                                   error="submit outcome unknown: waiting for the provider's callback")
        return
    try:
        # Before begin_submit: fetching an image is not a submit, and may take a while.
        provider_input = await inline_images(ctx, model.inline_images, job.input)
    except InputUnavailable as exc:
        await _input_unavailable(ctx, job, task, exc)
        return
    order = SubmitOrder(
        job_id=job.id,
        model=model.native_id,
        input=provider_input,
        webhook_url=ctx.webhook_url(job.provider, job.id) if webhook else None,
        webhook_secret=job.webhook_secret if webhook else None,
    )
    reuse = plan.reuse.id if plan.reuse is not None else None
    attempt_id = await ctx.store.jobs.begin_submit(job.id, job.provider, now=ctx.clock(), reuse=reuse)
    if attempt_id is None:  # adopted, cancelled or moved on since it was read
        await ctx.store.tasks.finish_task(task.id)
        return
    crash_point(ctx.settings, "submit.before_send")
    try:
        raw = await send(ctx.client, adapter.submit_call(order), timeout=ctx.settings.http_timeout_s)
    except ProviderError as exc:
        await _submit_failed(ctx, job, task, exc, attempt_id)
        return
    crash_point(ctx.settings, "submit.answered")
    try:
        accepted = adapter.parse_submit(raw, now_ms=ctx.clock())
    except ProviderError as exc:
        if 200 <= raw.status < 300:
            # The provider took the request but its answer names no task we can use.
            exc = ProviderOutcomeUnknown(f"unreadable submit answer: {exc.message}", status=raw.status)
        await _submit_failed(ctx, job, task, exc, attempt_id)
        return
    now = ctx.clock()
    # Without a webhook the poller is the only way to hear back, so it starts at once.
    grace = ctx.settings.poll_grace_s if webhook else ctx.settings.poll_base_s
    note = None if webhook else f"{job.provider} has no webhooks: fluxhook polls it from the start"
    await _record_submit(ctx,
        job.id,
        Attempt(job.provider, "accepted", raw.status, note, accepted.provider_job_id),
        now=now,
        task=TaskOutcome(task.id),
        observation=Submitted(accepted.provider_job_id, accepted.polling_url),
        schedule=Schedule(poll_at=now + ctx.ms(grace)),
        attempt_id=attempt_id,
    )
    log.info("job %s: submitted to %s as %s", job.id, job.provider, accepted.provider_job_id)


async def _input_unavailable(
    ctx: WorkContext, job: JobRecord, task: TaskRecord, exc: InputUnavailable
) -> None:
    """An input image the provider needs inlined could not be fetched: try again later when that
    may help and there is time before FLUXHOOK_SUBMIT_TIMEOUT_SECONDS, else fail the job. No
    provider was called, and the next one would be given the same URL: no failover."""
    now = ctx.clock()
    settings = ctx.settings
    if exc.retryable:
        delay = retry_delay(task.attempts - 1, base=settings.retry_base_s, cap=settings.retry_max_s,
                            rand=ctx.rand.random)
        if now + ctx.ms(delay) <= job.created_at + ctx.ms(settings.submit_timeout_s):
            log.info("job %s: %s; fetching it again in %.1fs", job.id, exc.message, delay)
            await ctx.store.tasks.retry_task(task.id, due_at=now + ctx.ms(delay), error=exc.message)
            return
    log.info("job %s: not submitted to %s: %s", job.id, job.provider, exc.message)
    await _record_submit(ctx,
        job.id, Attempt(job.provider, "rejected", message=exc.message), now=now,
        task=TaskOutcome(task.id), observation=SubmitRejected(exc.message, ErrorCode.INPUT_UNAVAILABLE),
    )


async def _submit_failed(
    ctx: WorkContext, job: JobRecord, task: TaskRecord, exc: ProviderError, attempt_id: int
) -> None:
    now = ctx.clock()
    if isinstance(exc, ProviderOutcomeUnknown):
        # Not another provider, and not at once: the plan decides when (service/adoption.py).
        log.warning("job %s: submit to %s may have been accepted (%s); not repeating it blindly",
                    job.id, job.provider, exc.message)
        delay = retry_delay(task.attempts - 1, base=ctx.settings.retry_base_s, cap=ctx.settings.retry_max_s,
                            rand=ctx.rand.random)
        await _record_submit(ctx,
            job.id, Attempt(job.provider, "unknown", exc.status, exc.message), now=now,
            task=TaskOutcome(task.id, retry_at=now + ctx.ms(delay), error=exc.message),
            attempt_id=attempt_id,
        )
        ctx.nudge()
        return
    following = next_candidate(job) if another_provider_could_fix(exc) else None
    if following is not None:
        log.info("job %s: %s failed (%s); failing over to %s", job.id, job.provider, exc.message, following)
        await _record_submit(ctx,
            job.id, Attempt(job.provider, "failed_over", exc.status, exc.message), now=now,
            task=TaskOutcome(task.id, retry_at=now), switch_to=following, attempt_id=attempt_id,
        )
        ctx.nudge()
        return
    if isinstance(exc, ProviderRejected):
        log.info("job %s: submit rejected by %s: %s", job.id, job.provider, exc.message)
        await _record_submit(ctx,
            job.id, Attempt(job.provider, "rejected", exc.status, exc.message), now=now,
            task=TaskOutcome(task.id), observation=SubmitRejected(exc.message), attempt_id=attempt_id,
        )
        return
    assert isinstance(exc, ProviderRetryable)
    settings = ctx.settings
    delay = retry_delay(task.attempts - 1, base=settings.retry_base_s, cap=settings.retry_max_s,
                        rand=ctx.rand.random, retry_after=exc.retry_after)
    if now + ctx.ms(delay) > job.created_at + ctx.ms(settings.submit_timeout_s):
        log.warning("job %s: giving up submitting after %d tries: %s", job.id, task.attempts, exc.message)
        await _record_submit(ctx,
            job.id, Attempt(job.provider, "unavailable", exc.status, exc.message), now=now,
            task=TaskOutcome(task.id), attempt_id=attempt_id,
            observation=SubmitRejected(f"provider unavailable: {exc.message}", ErrorCode.PROVIDER_ERROR),
        )
        return
    log.info("job %s: submit retry in %.1fs: %s", job.id, delay, exc.message)
    await _record_submit(ctx,
        job.id, Attempt(job.provider, "unavailable", exc.status, exc.message), now=now,
        task=TaskOutcome(task.id, retry_at=now + ctx.ms(delay), error=exc.message), attempt_id=attempt_id,
    )


async def _record_submit(ctx: WorkContext, job_id: str, attempt: Attempt, **write: Any) -> None:
    """Write one submit's outcome (JobStore.record_submit) and count it."""
    recorded = await ctx.store.jobs.record_submit(job_id, attempt, **write)
    ctx.metrics.submit_attempt(attempt.provider, attempt.outcome)
    ctx.metrics.job_recorded(recorded)
