"""The fallback poller: asks the provider about jobs whose callback has not come."""

from __future__ import annotations

import logging

from service.backoff import next_delay, retry_delay
from service.context import WorkContext
from service.errors import ProviderError, ProviderRetryable
from service.jobs import Source, TimedOut
from service.providers.transport import send
from service.reports import observe
from storage.records import TaskRecord
from storage.store import Schedule, TaskOutcome

log = logging.getLogger("fluxhook.poller")


async def poll_job(ctx: WorkContext, task: TaskRecord) -> None:
    job = await ctx.store.get_job(task.job_id)
    if job is None or not job.state.awaiting_provider:
        await ctx.store.finish_task(task.id)
        return
    settings = ctx.settings
    now = ctx.clock()
    if now >= job.deadline_at:
        await ctx.store.record_observation(
            job.id, TimedOut(f"no final answer from {job.provider} within "
                             f"{settings.job_timeout_s:.0f}s"),
            now=now, task=TaskOutcome(task.id),
        )
        return
    adapter = ctx.adapters.get(job.provider)
    if adapter is None or job.provider_job_id is None:
        # Not submitted yet (a hint callback beat the submit answer home): look again soon.
        await ctx.store.retry_task(task.id, due_at=now + ctx.ms(settings.poll_base_s),
                                   error="not submitted yet")
        return
    try:
        raw = await send(ctx.client, adapter.status_call(job.provider_job_id, job.polling_url),
                         timeout=settings.http_timeout_s)
        report = adapter.parse_status(raw, now_ms=ctx.clock())
    except ProviderError as exc:
        retry_after = exc.retry_after if isinstance(exc, ProviderRetryable) else None
        delay = retry_delay(task.attempts - 1, base=settings.poll_base_s, cap=settings.poll_max_s,
                            rand=ctx.rand.random, retry_after=retry_after)
        log.info("job %s: poll failed, again in %.1fs: %s", job.id, delay, exc.message)
        await ctx.store.retry_task(task.id, due_at=ctx.clock() + ctx.ms(delay), error=exc.message)
        return
    now = ctx.clock()
    observation = observe(report, source=Source.POLL, submitted_at=job.submitted_at, now=now,
                          not_found_grace_ms=ctx.ms(settings.not_found_grace_s))
    delay = next_delay(task.attempts - 1, base=settings.poll_base_s, cap=settings.poll_max_s,
                       rand=ctx.rand.random)
    recorded = await ctx.store.record_observation(
        job.id, observation, now=now, schedule=Schedule(fetch_at=now),
        task=TaskOutcome(task.id, retry_at=now + ctx.ms(delay)), counted_poll=True,
    )
    if recorded and recorded.transition and recorded.transition.changed_from(job.state):
        log.info("job %s: poll says %s -> %s", job.id, report.state, recorded.job.status)
        ctx.nudge()
