"""Turn a provider's StatusReport into a state-machine observation. Pure."""

from __future__ import annotations

from service.jobs import (
    Cancelled,
    ErrorCode,
    Observation,
    Progressed,
    ProviderFailed,
    ProviderSucceeded,
    Source,
)
from service.providers.base import ProviderState, StatusReport


def observe(
    report: StatusReport,
    *,
    source: Source,
    submitted_at: int | None,
    now: int,
    not_found_grace_ms: int,
) -> Observation:
    """`Task not found` right after submit is a provider still catching up, not a failure."""
    state = report.state
    if state is ProviderState.READY:
        return ProviderSucceeded(source, report.output_urls)
    if state is ProviderState.MODERATED:
        return ProviderFailed(source, ErrorCode.MODERATED, report.message or "moderated")
    if state is ProviderState.FAILED:
        return ProviderFailed(source, ErrorCode.PROVIDER_ERROR, report.message or "provider error")
    if state is ProviderState.CANCELLED:
        return Cancelled("cancelled at the provider")
    if state is ProviderState.NOT_FOUND:
        if submitted_at is not None and now - submitted_at >= not_found_grace_ms:
            return ProviderFailed(
                source, ErrorCode.PROVIDER_ERROR, report.message or "Task not found (expired or lost)"
            )
        return Progressed(source, None)
    return Progressed(source, report.progress)
