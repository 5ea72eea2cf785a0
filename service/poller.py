"""The fallback poller: asks the provider about jobs whose callback has not come."""

from __future__ import annotations

import logging

from service.adoption import unconfirmed_tasks
from service.backoff import next_delay, retry_delay
from service.context import WorkContext
from service.errors import ProviderError, ProviderRejected, ProviderRetryable
from service.jobs import Source, TimedOut
from service.providers.base import Adapter, ProviderState, StatusReport
from service.providers.transport import send
from service.reports import observe
from storage.records import JobRecord, Schedule, TaskOutcome, TaskRecord

log = logging.getLogger("fluxhook.poller")


async def poll_job(ctx: WorkContext, task: TaskRecord) -> None:
    job = await ctx.store.jobs.get_job(task.job_id)
    if job is None or not job.state.awaiting_provider:
        await ctx.store.tasks.finish_task(task.id)
        return
    settings = ctx.settings
    now = ctx.clock()
    if now >= job.deadline_at:
        ended = await ctx.store.jobs.record_observation(
            job.id, TimedOut(f"no final answer from {job.provider} within "
                             f"{settings.job_timeout_s:.0f}s"),
            now=now, task=TaskOutcome(task.id),
        )
        ctx.metrics.job_recorded(ended)
        return
    adapter = ctx.adapters.get(job.provider)
    if adapter is None:
        await ctx.store.tasks.retry_task(task.id, due_at=now + ctx.ms(settings.poll_base_s),
                                   error=f"provider {job.provider!r} is not configured")
        return
    job = await _confirm_named_tasks(ctx, job, adapter) or job
    if not job.state.awaiting_provider:
        await ctx.store.tasks.finish_task(task.id)
        return
    if job.provider_job_id is None:
        # No task to ask about yet: the submit (or its answer) is still on the way, and it
        # schedules the polls; a hint naming a task was confirmed or refuted above.
        await ctx.store.tasks.finish_task(task.id)
        return
    try:
        report = await ask_status(ctx, adapter, job.provider_job_id, job.polling_url)
    except ProviderError as exc:
        ctx.metrics.poll(job.provider, "failed")
        retry_after = exc.retry_after if isinstance(exc, ProviderRetryable) else None
        delay = retry_delay(task.attempts - 1, base=settings.poll_base_s, cap=settings.poll_max_s,
                            rand=ctx.rand.random, retry_after=retry_after)
        log.info("job %s: poll failed, again in %.1fs: %s", job.id, delay, exc.message)
        await ctx.store.tasks.retry_task(task.id, due_at=ctx.clock() + ctx.ms(delay), error=exc.message)
        return
    ctx.metrics.poll(job.provider, "answered")
    now = ctx.clock()
    observation = observe(report, source=Source.POLL, submitted_at=job.submitted_at, now=now,
                          not_found_grace_ms=ctx.ms(settings.not_found_grace_s))
    delay = next_delay(task.attempts - 1, base=settings.poll_base_s, cap=settings.poll_max_s,
                       rand=ctx.rand.random)
    recorded = await ctx.store.jobs.record_observation(
        job.id, observation, now=now, schedule=Schedule(fetch_at=now),
        task=TaskOutcome(task.id, retry_at=now + ctx.ms(delay)), counted_poll=True,
    )
    ctx.metrics.job_recorded(recorded)
    if recorded and recorded.transition and recorded.transition.changed_from(job.state):
        log.info("job %s: poll says %s -> %s", job.id, report.state, recorded.job.status)
        ctx.nudge()


async def ask_status(
    ctx: WorkContext, adapter: Adapter, task_id: str, polling_url: str | None
) -> StatusReport:
    """The provider's report on one task. A report naming a `result_url` (fal: COMPLETED, the
    outputs are in the result) is followed by one more call there, whose report is the answer."""
    timeout = ctx.settings.http_timeout_s
    raw = await send(ctx.client, adapter.status_call(task_id, polling_url), timeout=timeout)
    report = adapter.parse_status(raw, now_ms=ctx.clock())
    if report.result_url is not None:
        raw = await send(ctx.client, adapter.status_call(task_id, report.result_url), timeout=timeout)
        report = adapter.parse_status(raw, now_ms=ctx.clock())
        if report.result_url is not None:  # a result must not send us on again
            raise ProviderRejected(f"result of {task_id} names yet another result URL")
    return report


async def _confirm_named_tasks(ctx: WorkContext, job: JobRecord, adapter: Adapter) -> JobRecord | None:
    """Poll the tasks unsigned callbacks named that no attempt accounts for: one the provider
    knows came from a submit of this job whose answer was lost, and is adopted (or recorded as
    an orphan); one it does not know was forged, and is never polled again."""
    if not job.callback_count:
        return None  # only a callback can name a task: a job polled for lack of one has none
    named = await ctx.store.jobs.named_tasks(job.id, job.provider)
    if not named:
        return None
    attempts = (await ctx.store.jobs.get_attempts([job.id]))[job.id]
    recorded = None
    for candidate in unconfirmed_tasks(named, current=job.provider_job_id, attempts=attempts):
        try:
            report = await ask_status(ctx, adapter, candidate, None)
        except ProviderError as exc:
            ctx.metrics.poll(job.provider, "failed")
            log.info("job %s: could not confirm task %s yet: %s", job.id, candidate, exc.message)
            continue
        ctx.metrics.poll(job.provider, "answered")
        if report.state is ProviderState.NOT_FOUND:
            log.warning("job %s: a hint named task %s, which %s does not know", job.id, candidate,
                        job.provider)
            await ctx.store.jobs.refute_task(job.id, candidate)
            continue
        now = ctx.clock()
        observation = observe(report, source=Source.POLL, submitted_at=job.submitted_at or now, now=now,
                              not_found_grace_ms=ctx.ms(ctx.settings.not_found_grace_s))
        adopted = await ctx.store.jobs.adopt_task(
            job.id, job.provider, candidate, observation, now=now,
            schedule=Schedule(fetch_at=now, poll_at=now + ctx.ms(ctx.settings.poll_base_s)),
        )
        ctx.metrics.job_recorded(adopted)
        recorded = adopted or recorded
        log.info("job %s: task %s confirmed by polling it", job.id, candidate)
        ctx.nudge()
    return recorded.job if recorded else None
