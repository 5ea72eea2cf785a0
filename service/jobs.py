"""The job state machine: a pure function from (state, observation) to (state, effects).

Observations come from the submitter, callbacks, the poller, the fetcher and the API. They may
arrive twice, late or out of order; `apply` is monotonic, so none of that can move a job
backwards or complete it twice. The first terminal word from the provider wins.

    queued -> submitted -> running -> succeeded | failed | cancelled

A job whose provider said "ready" stays `running` until every output is stored: `succeeded`
means the images are safely ours, never "the provider has them somewhere".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from storage.state import TERMINAL as TERMINAL
from storage.state import Effect as Effect
from storage.state import JobState as JobState
from storage.state import JobStatus as JobStatus
from storage.state import Transition as Transition


class Source(StrEnum):
    """Who observed a provider state; the first terminal one becomes `completion_source`."""

    CALLBACK = "callback"
    POLL = "poll"


class ErrorCode(StrEnum):
    MODERATED = "moderated"
    PROVIDER_ERROR = "provider_error"
    SUBMIT_REJECTED = "submit_rejected"
    TIMEOUT = "timeout"
    OUTPUT_UNAVAILABLE = "output_unavailable"
    INPUT_UNAVAILABLE = "input_unavailable"  # an input image fluxhook had to fetch did not come
    CANCELLED = "cancelled"


# Observations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    provider_job_id: str
    polling_url: str | None = None


@dataclass(frozen=True)
class SubmitRejected:
    message: str
    code: str = ErrorCode.SUBMIT_REJECTED


@dataclass(frozen=True)
class Progressed:
    source: Source
    progress: float | None = None


@dataclass(frozen=True)
class ProviderSucceeded:
    source: Source
    output_urls: tuple[str, ...]


@dataclass(frozen=True)
class ProviderFailed:
    source: Source
    code: str
    message: str


@dataclass(frozen=True)
class OutputsStored:
    count: int


@dataclass(frozen=True)
class OutputsUnavailable:
    message: str


@dataclass(frozen=True)
class TimedOut:
    message: str


@dataclass(frozen=True)
class Cancelled:
    message: str = "cancelled by request"


Observation = (
    Submitted
    | SubmitRejected
    | Progressed
    | ProviderSucceeded
    | ProviderFailed
    | OutputsStored
    | OutputsUnavailable
    | TimedOut
    | Cancelled
)


# Effects (storage/state.py): the work a transition causes, written in the same transaction --


def apply(state: JobState, observation: Observation) -> Transition:
    """Fold one observation into a job. Pure: no I/O, no clock."""
    match observation:
        case Submitted(provider_job_id=pid, polling_url=url):
            return _submitted(state, pid, url)
        case SubmitRejected(message=message, code=code):
            if state.status is not JobStatus.QUEUED:
                return Transition(state)
            return _fail(state, code, message, source=None)
        case Progressed(progress=progress):
            return _progressed(state, progress)
        case ProviderSucceeded(source=source, output_urls=urls):
            if not state.awaiting_provider or not urls:
                return Transition(state)
            new = replace(
                state,
                status=JobStatus.RUNNING,
                output_urls=tuple(urls),
                completion_source=str(source),
                progress=1.0,
            )
            return Transition(new, (Effect.STOP_POLLING, Effect.FETCH_OUTPUTS))
        case ProviderFailed(source=source, code=code, message=message):
            if not state.awaiting_provider:
                return Transition(state)
            return _fail(state, code, message, source=source)
        case OutputsStored():
            if state.terminal or not state.output_urls:
                return Transition(state)
            return Transition(replace(state, status=JobStatus.SUCCEEDED), (Effect.STOP_FETCHING,))
        case OutputsUnavailable(message=message):
            if state.terminal or not state.output_urls:
                return Transition(state)
            new = replace(
                state,
                status=JobStatus.FAILED,
                error_code=ErrorCode.OUTPUT_UNAVAILABLE,
                error_message=message,
            )
            return Transition(new, (Effect.STOP_FETCHING,))
        case TimedOut(message=message):
            if not state.awaiting_provider:
                return Transition(state)
            return _fail(state, ErrorCode.TIMEOUT, message, source=None)
        case Cancelled(message=message):
            if state.terminal:
                return Transition(state)
            new = replace(
                state,
                status=JobStatus.CANCELLED,
                error_code=ErrorCode.CANCELLED,
                error_message=message,
            )
            return Transition(new, (Effect.STOP_POLLING, Effect.STOP_FETCHING))
    raise TypeError(f"not an observation: {observation!r}")  # pragma: no cover


def _submitted(state: JobState, pid: str, url: str | None) -> Transition:
    # A callback can beat the submit response home: record the ids whenever they are
    # missing, but only a queued job moves forward.
    new = replace(
        state,
        provider_job_id=state.provider_job_id or pid,
        polling_url=state.polling_url or url,
    )
    if state.status is not JobStatus.QUEUED:
        return Transition(new)
    return Transition(replace(new, status=JobStatus.SUBMITTED), (Effect.SCHEDULE_POLL,))


def _progressed(state: JobState, progress: float | None) -> Transition:
    if not state.awaiting_provider:
        return Transition(state)
    new = state
    if state.status in (JobStatus.QUEUED, JobStatus.SUBMITTED):
        new = replace(new, status=JobStatus.RUNNING)
    if progress is not None and (state.progress is None or progress > state.progress):
        new = replace(new, progress=min(progress, 1.0))
    return Transition(new)


def _fail(state: JobState, code: str, message: str, *, source: Source | None) -> Transition:
    new = replace(
        state,
        status=JobStatus.FAILED,
        error_code=str(code),
        error_message=message,
        completion_source=str(source) if source else state.completion_source,
    )
    return Transition(new, (Effect.STOP_POLLING,))
