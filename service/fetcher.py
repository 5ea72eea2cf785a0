"""Store a ready job's outputs before the provider's URLs expire, and hand the notifications
the success makes to this process's notifier (service/notifier.py `offer`/`take`)."""

from __future__ import annotations

import logging
import time

from service.backoff import retry_delay
from service.context import WorkContext
from service.crash_points import crash_point
from service.early_downloads import download_outputs
from service.errors import OutputRejected, OutputRetryable
from service.jobs import OutputsStored, OutputsUnavailable
from storage.records import StoredOutput, TaskOutcome, TaskRecord

log = logging.getLogger("fluxhook.fetcher")


async def fetch_outputs(ctx: WorkContext, task: TaskRecord) -> bool:
    """Download and store the job's outputs and record its success. True when the deliveries
    that success made were offered to this process's notifier in its own transaction: the
    notifier need not look for them (any it could not take wait for a slot it frees)."""
    job = task.job or await ctx.store.jobs.get_job(task.job_id)
    if job is None or job.state.terminal or not job.output_urls:
        ctx.early_downloads.cancel([task.job_id])  # nothing to store: an early one goes unused
        await ctx.store.tasks.finish_task(task.id)
        return False
    settings = ctx.settings
    began = time.perf_counter()
    try:
        # Started while the callback that made this task was being applied, if this process
        # applied it (service/early_downloads.py); else, or if that failed, downloaded now.
        early = await ctx.early_downloads.take(job.id, tuple(job.output_urls))
        got = early if early is not None else await download_outputs(ctx, job.provider, job.output_urls)
    except OutputRetryable as exc:
        now = ctx.clock()
        ready_at = job.ready_at or now
        delay = retry_delay(task.attempts - 1, base=settings.retry_base_s, cap=settings.retry_max_s,
                            rand=ctx.rand.random)
        if now + ctx.ms(delay) <= ready_at + ctx.ms(settings.output_window_s):
            log.info("job %s: output download retry in %.1fs: %s", job.id, delay, exc.message)
            await ctx.store.tasks.retry_task(task.id, due_at=now + ctx.ms(delay), error=exc.message)
            return False
        await _give_up(ctx, job.id, task, f"output not downloadable in time: {exc.message}")
        return False
    except OutputRejected as exc:
        await _give_up(ctx, job.id, task, exc.message)
        return False
    seconds = time.perf_counter() - began
    outputs = [StoredOutput(index, one.sha256, one.content_type, one.bytes, url)
               for index, (one, url) in enumerate(zip(got, job.output_urls, strict=True))]
    now = ctx.clock()
    handoff = ctx.handoff
    lease = handoff.offer(now) if handoff is not None else None
    recorded = await ctx.store.jobs.record_outputs(
        job.id, outputs, now=now, task_id=task.id, observation=OutputsStored(len(outputs)), lease=lease
    )
    if recorded is not None and recorded.leased:
        # Committed and leased to this process, not yet sent: dying here, they wait out the
        # lease and any notifier sends them then (tests/test_crash_notify.py).
        crash_point(settings, "notify.leased")
        if handoff is None or not handoff.take(recorded.leased):  # it stopped meanwhile
            await ctx.store.deliveries.release_deliveries([(d.id, d.lease_until) for d in recorded.leased])
            lease = None
    ctx.metrics.job_recorded(recorded)
    since_ready = (now - job.ready_at) / 1000 if job.ready_at is not None else None
    ctx.metrics.outputs_stored(job.provider, size=sum(o.bytes for o in outputs), seconds=seconds,
                               since_ready_s=since_ready)
    log.info("job %s: %d output(s) stored", job.id, len(outputs))
    return lease is not None


async def _give_up(ctx: WorkContext, job_id: str, task: TaskRecord, message: str) -> None:
    log.warning("job %s: output unavailable: %s", job_id, message)
    ctx.metrics.job_recorded(await ctx.store.jobs.record_observation(
        job_id, OutputsUnavailable(message), now=ctx.clock(), task=TaskOutcome(task.id)
    ))
