"""The state machine as a table: (state before, observation) -> (status after, effects)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.jobs import (
    Cancelled,
    Effect,
    ErrorCode,
    JobState,
    JobStatus,
    OutputsStored,
    OutputsUnavailable,
    Progressed,
    ProviderFailed,
    ProviderSucceeded,
    Source,
    SubmitRejected,
    Submitted,
    TimedOut,
    apply,
)

Q = JobState()
SUB = JobState(JobStatus.SUBMITTED, provider_job_id="p1", polling_url="https://api.bfl.ai/r?id=p1")
RUN = replace(SUB, status=JobStatus.RUNNING, progress=0.4)
FETCHING = replace(RUN, output_urls=("https://delivery.bfl.ai/a.jpeg",), completion_source="callback")
DONE = replace(FETCHING, status=JobStatus.SUCCEEDED)
FAILED = replace(SUB, status=JobStatus.FAILED, error_code="moderated", error_message="m",
                 completion_source="poll")
CANCELLED = replace(SUB, status=JobStatus.CANCELLED, error_code="cancelled")

READY_CB = ProviderSucceeded(Source.CALLBACK, ("https://delivery.bfl.ai/a.jpeg",))
READY_POLL = ProviderSucceeded(Source.POLL, ("https://delivery.bfl.ai/b.jpeg",))
ERROR_CB = ProviderFailed(Source.CALLBACK, ErrorCode.PROVIDER_ERROR, "Error")
MODERATED_POLL = ProviderFailed(Source.POLL, ErrorCode.MODERATED, "Content Moderated")
PENDING = Progressed(Source.POLL, 0.5)

CASES = [
    # (id, before, observation, status after, effects)
    ("submit-accepted", Q, Submitted("p1", "u"), JobStatus.SUBMITTED, (Effect.SCHEDULE_POLL,)),
    ("submit-rejected", Q, SubmitRejected("402 no credits"), JobStatus.FAILED, (Effect.STOP_POLLING,)),
    ("pending-starts-running", SUB, PENDING, JobStatus.RUNNING, ()),
    ("ready-by-callback-fetches", RUN, READY_CB, JobStatus.RUNNING,
     (Effect.STOP_POLLING, Effect.FETCH_OUTPUTS)),
    ("ready-by-poll-fetches", SUB, READY_POLL, JobStatus.RUNNING,
     (Effect.STOP_POLLING, Effect.FETCH_OUTPUTS)),
    ("provider-error-fails", RUN, ERROR_CB, JobStatus.FAILED, (Effect.STOP_POLLING,)),
    ("moderated-fails", SUB, MODERATED_POLL, JobStatus.FAILED, (Effect.STOP_POLLING,)),
    ("outputs-stored-succeeds", FETCHING, OutputsStored(1), JobStatus.SUCCEEDED, (Effect.STOP_FETCHING,)),
    ("outputs-unavailable-fails", FETCHING, OutputsUnavailable("404"), JobStatus.FAILED,
     (Effect.STOP_FETCHING,)),
    ("deadline-fails", RUN, TimedOut("late"), JobStatus.FAILED, (Effect.STOP_POLLING,)),
    ("cancel-running", RUN, Cancelled(), JobStatus.CANCELLED, (Effect.STOP_POLLING, Effect.STOP_FETCHING)),
    # Duplicates change nothing.
    ("duplicate-ready-callback", FETCHING, READY_CB, JobStatus.RUNNING, ()),
    ("duplicate-submitted", SUB, Submitted("p1", "u"), JobStatus.SUBMITTED, ()),
    ("duplicate-outputs-stored", DONE, OutputsStored(1), JobStatus.SUCCEEDED, ()),
    ("duplicate-failure", FAILED, MODERATED_POLL, JobStatus.FAILED, ()),
    # Regressions are refused.
    ("pending-after-ready", FETCHING, PENDING, JobStatus.RUNNING, ()),
    ("pending-after-success", DONE, PENDING, JobStatus.SUCCEEDED, ()),
    ("submitted-after-running", RUN, Submitted("p1", "u"), JobStatus.RUNNING, ()),
    ("reject-after-submit", SUB, SubmitRejected("late 500"), JobStatus.SUBMITTED, ()),
    # Out of order: the first terminal word wins, later contradictions are ignored.
    ("error-after-ready", FETCHING, ERROR_CB, JobStatus.RUNNING, ()),
    ("ready-after-error", FAILED, READY_POLL, JobStatus.FAILED, ()),
    ("ready-after-cancel", CANCELLED, READY_CB, JobStatus.CANCELLED, ()),
    ("cancel-after-success", DONE, Cancelled(), JobStatus.SUCCEEDED, ()),
    ("timeout-while-fetching", FETCHING, TimedOut("late"), JobStatus.RUNNING, ()),
    ("timeout-after-success", DONE, TimedOut("late"), JobStatus.SUCCEEDED, ()),
    ("outputs-stored-before-ready", RUN, OutputsStored(1), JobStatus.RUNNING, ()),
    ("callback-before-submit-answer", Q, READY_CB, JobStatus.RUNNING,
     (Effect.STOP_POLLING, Effect.FETCH_OUTPUTS)),
    ("submit-answer-after-callback", replace(Q, status=JobStatus.RUNNING, output_urls=("u",)),
     Submitted("p1", "poll"), JobStatus.RUNNING, ()),
    ("ready-without-urls-ignored", RUN, ProviderSucceeded(Source.POLL, ()), JobStatus.RUNNING, ()),
]


@pytest.mark.parametrize(("before", "observation", "status", "effects"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_transition_table(before, observation, status, effects):
    transition = apply(before, observation)
    assert transition.state.status is status
    assert transition.effects == effects


def test_terminal_states_absorb_every_observation():
    observations = [Submitted("p2"), SubmitRejected("x"), PENDING, READY_CB, ERROR_CB,
                    OutputsStored(1), OutputsUnavailable("x"), TimedOut("x"), Cancelled()]
    for terminal in (DONE, FAILED, CANCELLED):
        for observation in observations:
            transition = apply(terminal, observation)
            assert transition.state.status is terminal.status, (terminal.status, observation)
            assert transition.effects == ()


def test_first_terminal_source_is_kept_as_completion_source():
    after_callback = apply(RUN, READY_CB).state
    assert after_callback.completion_source == "callback"
    assert apply(after_callback, READY_POLL).state.completion_source == "callback"


def test_submit_answer_arriving_late_still_records_provider_ids():
    raced = replace(Q, status=JobStatus.RUNNING, output_urls=("u",))
    state = apply(raced, Submitted("p9", "https://api.bfl.ai/v1/get_result?id=p9")).state
    assert state.provider_job_id == "p9"
    assert state.polling_url == "https://api.bfl.ai/v1/get_result?id=p9"


def test_progress_never_goes_backwards():
    state = apply(SUB, Progressed(Source.POLL, 0.7)).state
    assert apply(state, Progressed(Source.POLL, 0.3)).state.progress == 0.7


def test_failure_carries_code_and_message():
    state = apply(SUB, MODERATED_POLL).state
    assert (state.error_code, state.error_message) == ("moderated", "Content Moderated")
    assert state.completion_source == "poll"
