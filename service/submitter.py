"""Submit a queued job to its provider, with a per-job webhook URL and secret."""

from __future__ import annotations

import logging

from service.backoff import retry_delay
from service.context import WorkContext
from service.errors import ProviderRejected, ProviderRetryable
from service.jobs import ErrorCode, JobStatus, SubmitRejected, Submitted
from service.providers.base import SubmitOrder
from service.providers.transport import send
from storage.records import TaskRecord
from storage.store import Schedule, TaskOutcome

log = logging.getLogger("fluxhook.submitter")


async def submit_job(ctx: WorkContext, task: TaskRecord) -> None:
    job = await ctx.store.get_job(task.job_id)
    if job is None or job.status is not JobStatus.QUEUED:
        await ctx.store.finish_task(task.id)
        return
    adapter = ctx.adapters.get(job.provider)
    model = ctx.catalog.find(job.provider, job.model)
    if adapter is None or model is None:
        await ctx.store.record_observation(
            job.id,
            SubmitRejected(f"provider {job.provider!r} with model {job.model!r} is not configured"),
            now=ctx.clock(),
            task=TaskOutcome(task.id),
        )
        return
    webhook = adapter.supports_webhooks
    order = SubmitOrder(
        job_id=job.id,
        model=model.native_id,
        input=job.input,
        webhook_url=ctx.webhook_url(job.provider, job.id) if webhook else None,
        webhook_secret=job.webhook_secret if webhook else None,
    )
    settings = ctx.settings
    try:
        raw = await send(ctx.client, adapter.submit_call(order), timeout=settings.http_timeout_s)
        accepted = adapter.parse_submit(raw, now_ms=ctx.clock())
    except ProviderRetryable as exc:
        now = ctx.clock()
        delay = retry_delay(task.attempts - 1, base=settings.retry_base_s, cap=settings.retry_max_s,
                            rand=ctx.rand.random, retry_after=exc.retry_after)
        if now + ctx.ms(delay) > job.created_at + ctx.ms(settings.submit_timeout_s):
            log.warning("job %s: giving up submitting after %d tries: %s", job.id, task.attempts, exc.message)
            await ctx.store.record_observation(
                job.id, SubmitRejected(f"provider unavailable: {exc.message}", ErrorCode.PROVIDER_ERROR),
                now=now, task=TaskOutcome(task.id),
            )
        else:
            log.info("job %s: submit retry in %.1fs: %s", job.id, delay, exc.message)
            await ctx.store.retry_task(task.id, due_at=now + ctx.ms(delay), error=exc.message)
        return
    except ProviderRejected as exc:
        log.info("job %s: submit rejected: %s", job.id, exc.message)
        await ctx.store.record_observation(
            job.id, SubmitRejected(exc.message), now=ctx.clock(), task=TaskOutcome(task.id)
        )
        return
    now = ctx.clock()
    # Without a webhook the poller is the only way to hear back, so it starts at once.
    grace = settings.poll_grace_s if webhook else settings.poll_base_s
    await ctx.store.record_observation(
        job.id,
        Submitted(accepted.provider_job_id, accepted.polling_url),
        now=now,
        schedule=Schedule(poll_at=now + ctx.ms(grace)),
        task=TaskOutcome(task.id),
    )
    log.info("job %s: submitted to %s as %s", job.id, job.provider, accepted.provider_job_id)
