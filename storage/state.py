"""The job vocabulary the store persists and the core reads: shared pure value types.

The state machine that moves a job between these states is service/jobs.py's (`apply`); the
store runs it inside a transaction through the rules its caller hands it (storage/rules.py).
The attempt outcomes and task roles are service/adoption.py's rules' words, kept here because
they are stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class JobState:
    """The part of a job the state machine reads and writes."""

    status: JobStatus = JobStatus.QUEUED
    provider_job_id: str | None = None
    polling_url: str | None = None
    output_urls: tuple[str, ...] = ()
    error_code: str | None = None
    error_message: str | None = None
    completion_source: str | None = None
    progress: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def awaiting_provider(self) -> bool:
        """Still waiting to hear the provider's final word (so polling makes sense)."""
        return not self.terminal and not self.output_urls


# Effects: the work a transition causes, written in the same transaction -----------------------


class Effect(StrEnum):
    SCHEDULE_POLL = "schedule_poll"  # start the fallback poller (after its grace period)
    STOP_POLLING = "stop_polling"  # the provider's final word is in; never poll again
    FETCH_OUTPUTS = "fetch_outputs"  # download the outputs before their URLs expire
    STOP_FETCHING = "stop_fetching"


@dataclass(frozen=True)
class Transition:
    state: JobState
    effects: tuple[Effect, ...] = ()

    def changed_from(self, before: JobState) -> bool:
        return self.state != before


# Attempt outcomes (service/adoption.py) --------------------------------------------------------

UNKNOWN = "unknown"
ADOPTED = "adopted"
ORPHANED = "orphaned"


class TaskRole(StrEnum):
    """What a callback (or a confirming poll) naming a provider task means for its job."""

    CURRENT = "current"  # about the job's own task, or names none
    ADOPT = "adopt"  # a task from a submit whose answer was lost: the job takes it as its own
    ORPHAN = "orphan"  # a second task for a job that already has one: recorded; its result is
    # used only if it is the first to arrive
    CONFIRM = "confirm"  # unsigned, naming a task nobody vouches for: poll that task first
    FOREIGN = "foreign"  # names another task, and no submit of this job is unaccounted for
