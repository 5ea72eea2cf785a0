"""What the store asks of its caller: the pure rules it runs inside a transaction but does not own.

A store method that changes a job runs the job state machine, builds the event the change is worth
and serializes the values it writes, all inside one transaction, so that the change, its events
and the work it causes commit together. Those rules are the service's (service/rules.py
`JOB_RULES`: service/jobs.py, the job document, strict JSON); the store receives them when it is
opened and never imports service/. Every method is pure and synchronous; whatever one raises (a
`JsonRefused` naming a value that would not read back, say) rolls the transaction back and
reaches the store's caller as it was raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from storage.records import AttemptRecord, JobRecord, OutputRecord
from storage.state import JobState, Transition


class JobRules(Protocol):
    def apply(self, state: JobState, observation: Any) -> Transition:
        """The job state machine: fold one observation into a job's state."""
        ...

    def accepted(self, task: str) -> Any:
        """The observation "the provider accepted the submit as `task`" (an adopted task)."""
        ...

    def is_result(self, observation: Any) -> bool:
        """Whether `observation` is the provider's result (its outputs ready)."""
        ...

    def encode(self, value: Any, *, path: str) -> str:
        """`value` as the JSON text stored for it; raises, naming `path`, for one that would
        not read back (NaN, a lone surrogate)."""
        ...

    def decode(self, text: str) -> Any:
        """A stored JSON column's value; raises for text the strict rules refuse."""
        ...

    def repair(self, text: str | bytes, *, document: bool) -> str | None:
        """JSON text stored before the strict rules, rewritten to obey them; None when it
        already does. `document` for a whole event body (allowed to nest deeper)."""
        ...

    def job_event(
        self, job: JobRecord, outputs: Sequence[OutputRecord], attempts: Sequence[AttemptRecord], *,
        event_id: str, event_type: str, now: int, sequence: int, public_url: str,
    ) -> bytes:
        """The exact bytes a job event sends: its envelope around the job's document."""
        ...

    def system_event(self, data: Mapping[str, Any], *, event_id: str, event_type: str, now: int) -> bytes:
        """The exact bytes an event about no job sends."""
        ...

    def new_id(self, prefix: str, now: int) -> str:
        """A new unique, time-ordered id such as `evt_...`."""
        ...

    def timestamp(self, ms: int) -> str:
        """A time as written in a message."""
        ...
