"""Never pay twice, the pure rules: which task a callback is about, and when to submit again."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from service.adoption import (
    TaskRole,
    classify_task,
    pending_submit,
    plan_submit,
    unconfirmed_tasks,
)


@dataclass(frozen=True)
class A:
    provider: str
    outcome: str
    provider_job_id: str | None = None
    at: int = 1_000
    id: int = 1


LOST = A("bfl", "unknown")
ACCEPTED_T2 = A("bfl", "accepted", "t2", id=2)
ORPHAN_T1 = A("bfl", "orphaned", "t1")


@pytest.mark.parametrize(
    ("named", "current", "attempts", "verified", "role"),
    [
        (None, None, [LOST], True, TaskRole.CURRENT),
        ("t1", "t1", [A("bfl", "accepted", "t1")], False, TaskRole.CURRENT),
        ("t1", None, [LOST], True, TaskRole.ADOPT),
        ("t1", None, [LOST], False, TaskRole.CONFIRM),
        ("t1", "t2", [LOST, ACCEPTED_T2], True, TaskRole.ORPHAN),
        ("t1", "t2", [LOST, ACCEPTED_T2], False, TaskRole.CONFIRM),
        ("t1", "t2", [ORPHAN_T1, ACCEPTED_T2], False, TaskRole.ORPHAN),
        ("t9", "t2", [A("bfl", "accepted", "t2")], True, TaskRole.FOREIGN),
        ("t9", "t2", [A("bfl", "accepted", "t2")], False, TaskRole.FOREIGN),
        ("t1", None, [A("cometapi", "unknown")], True, TaskRole.FOREIGN),
    ],
    ids=[
        "names-no-task", "the-jobs-own-task", "verified-task-of-a-lost-submit-is-adopted",
        "unsigned-task-of-a-lost-submit-is-polled-first", "second-task-is-an-orphan",
        "unsigned-second-task-is-polled-first", "known-orphan-is-recorded-again",
        "another-task-with-nothing-unaccounted-for-is-refused-even-if-signed",
        "another-task-unsigned-is-refused", "a-lost-submit-to-another-provider-does-not-count",
    ],
)
def test_a_callback_is_classified_by_the_task_it_names(named, current, attempts, verified, role):
    assert classify_task(named, current=current, provider="bfl", attempts=attempts,
                         verified=verified) is role


def test_only_the_latest_attempt_can_be_a_pending_submit():
    assert pending_submit([LOST], "bfl") is LOST
    assert pending_submit([LOST, ACCEPTED_T2], "bfl") is None
    assert pending_submit([A("bfl", "unknown", "t1")], "bfl") is None  # its task is known
    assert pending_submit([LOST], "apiframe") is None
    assert pending_submit([], "bfl") is None


@pytest.mark.parametrize(
    ("attempts", "now", "calls_back", "idempotent", "submit", "wait_until", "reuse"),
    [
        ([], 5_000, True, False, True, None, None),
        ([A("bfl", "unavailable", at=1_000)], 5_000, True, False, True, None, None),
        ([LOST], 5_000, True, False, False, 61_000, None),
        ([LOST], 61_000, True, False, True, None, None),
        ([LOST], 5_000, True, True, True, None, LOST),
        ([LOST], 5_000, False, False, True, None, None),
    ],
    ids=["first-submit", "after-a-known-failure", "lost-answer-waits-for-the-callback",
         "window-over-submits-again", "idempotent-provider-resends-over-the-same-attempt",
         "provider-without-callbacks-cannot-wait-for-one"],
)
def test_a_submit_is_repeated_only_when_it_cannot_pay_twice_silently(
    attempts, now, calls_back, idempotent, submit, wait_until, reuse
):
    plan = plan_submit(attempts, "bfl", now=now, window_ms=60_000, calls_back=calls_back,
                       idempotent=idempotent)
    assert (plan.submit, plan.wait_until, plan.reuse) == (submit, wait_until, reuse)


def test_only_tasks_no_attempt_accounts_for_are_confirmed_and_only_a_few():
    attempts = [A("bfl", "accepted", "t2")]
    assert unconfirmed_tasks(["t1", "t2", "t1", "t3"], current="t2", attempts=attempts) == ["t1", "t3"]
    assert unconfirmed_tasks([f"x{i}" for i in range(10)], current=None, attempts=[], limit=3) == [
        "x0", "x1", "x2"]
