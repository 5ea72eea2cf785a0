"""What the intake and the workers share in one process (service/context.py)."""

from __future__ import annotations

from service.context import ParsedCallbacks
from service.providers.base import ProviderState, StatusReport


def report(task: str) -> StatusReport:
    return StatusReport(ProviderState.READY, provider_job_id=task)


def test_a_kept_report_is_taken_once_for_the_same_provider_and_bytes():
    parsed = ParsedCallbacks()
    kept = report("task-1")
    parsed.keep("bfl", b'{"id": "task-1"}', kept)

    assert parsed.take("fal", b'{"id": "task-1"}') is None  # another provider's parser
    assert parsed.take("bfl", b'{"id": "task-2"}') is None
    assert parsed.take("bfl", b'{"id": "task-1"}') is kept
    assert parsed.take("bfl", b'{"id": "task-1"}') is None  # taken: parsed again if ever needed


def test_beyond_its_bound_the_oldest_reports_are_dropped():
    parsed = ParsedCallbacks(most=2)
    for n in range(3):
        parsed.keep("bfl", b"%d" % n, report(f"task-{n}"))

    assert parsed.take("bfl", b"0") is None
    assert [parsed.take("bfl", b"%d" % n) for n in (1, 2)] == [report("task-1"), report("task-2")]
