"""Inbound provider callbacks: verify, record durably, act (or confirm by polling first)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from service.adoption import TaskRole, classify_task
from service.context import WorkContext
from service.errors import CallbackRejected
from service.jobs import Source
from service.providers.base import AccountSigned
from service.reports import observe
from service.signing import Verdict
from service.tokens import CallbackTarget
from storage.errors import UnknownJob
from storage.records import AttemptRecord, JobRecord, Judgement, Recorded, Schedule

log = logging.getLogger("fluxhook.callbacks")


async def ingest_callback(
    ctx: WorkContext, target: CallbackTarget, headers: Mapping[str, str], body: bytes
) -> Recorded:
    """Record one callback for the job its (already verified) token names.

    The signature is checked over the raw bytes before any parsing. A verified callback is
    acted on directly; an unsigned one is only a hint, and the job is confirmed by polling the
    provider right away. Forged, malformed and wrong-job callbacks raise CallbackRejected and
    change nothing.
    """
    adapter = ctx.adapters.get(target.provider)
    if adapter is None:
        raise CallbackRejected(f"provider {target.provider!r} is not configured",
                               code="unknown_provider", status_code=404)
    now = ctx.clock()
    # Account-signed providers (a documented scheme with a timestamp) are verified before the
    # store is touched: a missing or wrong signature is refused, never taken as a hint.
    signed = isinstance(adapter, AccountSigned)
    if isinstance(adapter, AccountSigned):
        await ctx.keyring.verify(adapter, headers, body, client=ctx.client, now_ms=now,
                                 timeout=ctx.settings.http_timeout_s)

    def judge(job: JobRecord, attempts: list[AttemptRecord]) -> Judgement:
        verdict = Verdict.VERIFIED if signed else adapter.verify_callback(headers, body, job.webhook_secret)
        report = adapter.parse_callback(body)
        verified = verdict is Verdict.VERIFIED
        task = report.provider_job_id
        role = classify_task(task, current=job.provider_job_id, provider=target.provider,
                             attempts=attempts, verified=verified)
        if role is TaskRole.FOREIGN:
            raise CallbackRejected("callback is about another job than its token names",
                                   code="wrong_job", status_code=403)
        if not verified:
            return Judgement(verdict.value, report.state.value, confirm_at=now, role=role, task=task)
        observation = observe(report, source=Source.CALLBACK, submitted_at=job.submitted_at,
                              now=now, not_found_grace_ms=ctx.ms(ctx.settings.not_found_grace_s))
        return Judgement(verdict.value, report.state.value, observation, role=role, task=task)

    try:
        recorded = await ctx.store.jobs.record_callback(
            target.job_id, provider=target.provider, body=body, judge=judge, now=now,
            schedule=Schedule(fetch_at=now, poll_at=now + ctx.ms(ctx.settings.poll_grace_s)),
        )
    except UnknownJob as exc:
        raise CallbackRejected("callback token names no job here", code="unknown_job",
                               status_code=403) from exc
    job = recorded.job
    verdict_text = "verified" if recorded.transition is not None else "unsigned"
    log.info("job %s: %s callback%s", job.id, verdict_text, " (duplicate)" if recorded.duplicate else "")
    ctx.nudge()
    return recorded
