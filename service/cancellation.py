"""Cancel a job: at the provider where it can (RunComfy, while queued), and always here."""

from __future__ import annotations

import logging

from service.context import WorkContext
from service.errors import Conflict, NotFound, ProviderError
from service.jobs import Cancelled
from service.providers.transport import send
from storage.records import JobRecord

log = logging.getLogger("fluxhook.cancellation")


async def cancel_job(ctx: WorkContext, job_id: str) -> JobRecord:
    """Mark the job cancelled: polling stops and later callbacks are ignored. 409 if final."""
    job = await ctx.store.jobs.get_job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}", details=[{"field": "job_id", "rule": "exists"}])
    _refuse_if_final(job)
    message = await _cancel_at_provider(ctx, job)
    recorded = await ctx.store.jobs.record_observation(job.id, Cancelled(message), now=ctx.clock())
    ctx.metrics.job_recorded(recorded)
    assert recorded is not None
    ctx.nudge()  # a job that was active at its provider frees a place for a waiting submit
    if recorded.job.status != "cancelled":
        _refuse_if_final(recorded.job)  # it finished while the provider was being asked
    log.info("job %s: cancelled (%s)", job.id, message)
    return recorded.job


async def _cancel_at_provider(ctx: WorkContext, job: JobRecord) -> str:
    adapter = ctx.adapters.get(job.provider)
    if job.provider_job_id is None:
        return "cancelled by request before it reached the provider"
    call = adapter.cancel_call(job.provider_job_id, job.polling_url) if adapter else None
    if adapter is None or call is None:
        return f"cancelled by request; {job.provider} has no cancel endpoint, so its result is ignored"
    try:
        raw = await send(ctx.client, call, timeout=ctx.settings.http_timeout_s)
        cancelled = adapter.parse_cancel(raw, now_ms=ctx.clock())
    except ProviderError as exc:
        return (f"cancelled by request; {job.provider}'s cancel failed ({exc.message}), "
                "so its result is ignored")
    if cancelled:
        return f"cancelled by request and at {job.provider}"
    return (f"cancelled by request; {job.provider} would not cancel it (already running), "
            "so its result is ignored")


def _refuse_if_final(job: JobRecord) -> None:
    if job.state.terminal:
        raise Conflict(
            f"job is already {job.status.value}",
            code="job_finished",
            details=[{"field": "status", "rule": "not_terminal", "current": job.status.value}],
        )
