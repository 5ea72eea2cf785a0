"""The rules the store runs inside its transactions (storage/rules.py `JobRules`), from the core.

The store is opened with `JOB_RULES`: the job state machine (service/jobs.py), the job document
and event envelope (service/documents.py), strict JSON (service/strict_json.py) and ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.documents import job_document, rfc3339
from service.ids import new_prefixed_id
from service.jobs import JobState, Observation, ProviderSucceeded, Submitted, Transition, apply
from service.strict_json import DOCUMENT_DEPTH, MAX_DEPTH, dumps, dumps_bytes, loads, repair_text
from storage.records import AttemptRecord, JobRecord, OutputRecord


def envelope(event_id: str, event_type: str, now: int, data: Any, sequence: int | None) -> bytes:
    """The exact bytes sent: the Standard Webhooks envelope, plus the event's id and sequence."""
    body: dict[str, Any] = {"id": event_id, "type": event_type, "timestamp": rfc3339(now)}
    if sequence is not None:
        body["sequence"] = sequence
    body["data"] = data
    return dumps_bytes(body)  # refuses what would not read back, before anything is written


class CoreRules:
    """storage/rules.py `JobRules`, as the core decides them."""

    def apply(self, state: JobState, observation: Observation) -> Transition:
        return apply(state, observation)

    def accepted(self, task: str) -> Observation:
        return Submitted(task)

    def is_result(self, observation: Observation) -> bool:
        return isinstance(observation, ProviderSucceeded)

    def encode(self, value: Any, *, path: str) -> str:
        return dumps(value, path=path)  # keeps the client's key order

    def decode(self, text: str) -> Any:
        return loads(text, refuse_nul=False)  # rows stored before NUL was refused still read

    def repair(self, text: str | bytes, *, document: bool) -> str | None:
        return repair_text(text, max_depth=DOCUMENT_DEPTH if document else MAX_DEPTH)

    def job_event(
        self, job: JobRecord, outputs: Sequence[OutputRecord], attempts: Sequence[AttemptRecord], *,
        event_id: str, event_type: str, now: int, sequence: int, public_url: str,
    ) -> bytes:
        document = job_document(job, list(outputs), public_url, list(attempts))
        return envelope(event_id, event_type, now, document, sequence)

    def system_event(self, data: Mapping[str, Any], *, event_id: str, event_type: str, now: int) -> bytes:
        return envelope(event_id, event_type, now, dict(data), None)

    def new_id(self, prefix: str, now: int) -> str:
        return new_prefixed_id(prefix, now)

    def timestamp(self, ms: int) -> str:
        return rfc3339(ms) or ""


JOB_RULES = CoreRules()
