"""The budget of wrong API keys per client (service/sign_in_limits.py): pure, the time passed in."""

from __future__ import annotations

from service.sign_in_limits import SignInLimits


def test_a_client_may_try_until_its_budget_is_spent_then_waits_out_the_window():
    limits = SignInLimits(failures_per_window=3, window_ms=60_000)
    for at in (0, 1_000, 2_000):
        assert limits.retry_after_s("10.0.0.1", now=at) is None
        limits.failed("10.0.0.1", now=at)
    assert limits.retry_after_s("10.0.0.1", now=2_000) == 58
    assert limits.retry_after_s("10.0.0.1", now=59_001) == 1
    assert limits.retry_after_s("10.0.0.1", now=60_000) is None  # a new window


def test_each_client_has_a_budget_of_its_own():
    limits = SignInLimits(failures_per_window=1, window_ms=60_000)
    limits.failed("10.0.0.1", now=0)
    assert limits.retry_after_s("10.0.0.1", now=1) == 60
    assert limits.retry_after_s("10.0.0.2", now=1) is None


def test_a_failure_after_the_window_starts_a_new_one():
    limits = SignInLimits(failures_per_window=2, window_ms=10_000)
    limits.failed("c", now=0)
    limits.failed("c", now=10_000)  # the first window is over: this one counts alone
    assert limits.retry_after_s("c", now=10_001) is None
    limits.failed("c", now=10_002)
    assert limits.retry_after_s("c", now=10_003) == 10


def test_memory_is_bounded_by_forgetting_the_least_recently_failing_clients():
    limits = SignInLimits(failures_per_window=1, window_ms=60_000, max_clients=2)
    limits.failed("a", now=0)
    limits.failed("b", now=1)
    limits.failed("a", now=2)  # a fails again: b is now the least recent
    limits.failed("c", now=3)
    assert limits.retry_after_s("b", now=4) is None  # forgotten
    assert limits.retry_after_s("a", now=4) is not None
    assert limits.retry_after_s("c", now=4) is not None
