"""The fallback poller: grace, backoff, Task not found, deadlines, and never after a callback."""

from __future__ import annotations

import httpx
import pytest
import respx

from service.jobs import Submitted
from service.worker import Worker
from storage.records import Schedule

pytestmark = pytest.mark.anyio

BASE = "https://api.bfl.ai"


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_mocked=True)


@pytest.fixture
def transport(router: respx.Router) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(router.async_handler)


async def submitted_job(ctx, make_job, clock, **fields):
    job = await make_job(**fields)
    [submit] = await ctx.store.tasks.get_tasks(job.id)
    await ctx.store.tasks.finish_task(submit.id)
    await ctx.store.jobs.record_observation(
        job.id,
        Submitted("t1", f"{BASE}/v1/get_result?id=t1"),
        now=clock(),
        schedule=Schedule(poll_at=clock() + 15_000),
    )
    return job


async def test_nothing_is_polled_during_the_grace_period(ctx, make_job, clock, router):
    poll = router.get(f"{BASE}/v1/get_result").mock(
        return_value=httpx.Response(200, json={"status": "Pending"})
    )
    await submitted_job(ctx, make_job, clock)
    clock.advance(14)
    assert await Worker(ctx).run_once() == 0
    clock.advance(1)
    assert await Worker(ctx).run_once() == 1
    assert poll.call_count == 1


async def test_pending_polls_back_off_with_jitter_up_to_the_cap(ctx, make_job, clock, router):
    router.get(f"{BASE}/v1/get_result").mock(return_value=httpx.Response(200, json={"status": "Pending"}))
    job = await submitted_job(ctx, make_job, clock)
    clock.advance(15)
    gaps = []
    for _ in range(8):
        await Worker(ctx).run_once()
        [task] = await ctx.store.tasks.get_tasks(job.id)
        gaps.append(task.due_at - clock())
        clock.now = task.due_at
    assert gaps[0] < gaps[3]  # backing off
    assert all(1_000 <= g <= 30_000 for g in gaps)  # half of each step is jitter; 30 s cap
    assert gaps[-1] >= 15_000


async def test_task_not_found_waits_out_its_grace_then_fails(ctx, make_job, clock, router):
    router.get(f"{BASE}/v1/get_result").mock(
        return_value=httpx.Response(200, json={"id": "t1", "status": "Task not found"})
    )
    job = await submitted_job(ctx, make_job, clock)
    clock.advance(15)
    await Worker(ctx).run_once()
    assert (await ctx.store.jobs.get_job(job.id)).status == "running"  # too soon to believe it
    clock.advance(60)
    await Worker(ctx).run_once()
    after = await ctx.store.jobs.get_job(job.id)
    assert (after.status, after.error_code) == ("failed", "provider_error")
    assert "Task not found" in after.error_message


async def test_a_job_past_its_deadline_fails_with_timeout(ctx, make_job, clock, router):
    poll = router.get(f"{BASE}/v1/get_result").mock(
        return_value=httpx.Response(200, json={"status": "Pending"})
    )
    job = await submitted_job(ctx, make_job, clock, deadline_at=clock() + 20_000)
    clock.advance(25)
    await Worker(ctx).run_once()
    after = await ctx.store.jobs.get_job(job.id)
    assert (after.status, after.error_code) == ("failed", "timeout")
    assert poll.call_count == 0
    assert await ctx.store.tasks.get_tasks(job.id) == []


async def test_rate_limited_poll_waits_for_retry_after(ctx, make_job, clock, router):
    router.get(f"{BASE}/v1/get_result").mock(
        return_value=httpx.Response(429, headers={"Retry-After": "25"}, json={"detail": "slow"})
    )
    job = await submitted_job(ctx, make_job, clock)
    clock.advance(15)
    await Worker(ctx).run_once()
    [task] = await ctx.store.tasks.get_tasks(job.id)
    assert task.due_at >= clock() + 25_000


@pytest.mark.parametrize(
    ("status", "code"),
    [("Error", "provider_error"), ("Request Moderated", "moderated"), ("Content Moderated", "moderated")],
)
async def test_failures_seen_by_polling_fail_the_job_and_stop_polling(
    ctx, make_job, clock, router, status, code
):
    router.get(f"{BASE}/v1/get_result").mock(
        return_value=httpx.Response(200, json={"id": "t1", "status": status})
    )
    job = await submitted_job(ctx, make_job, clock)
    clock.advance(15)
    await Worker(ctx).run_once()
    after = await ctx.store.jobs.get_job(job.id)
    assert (after.status, after.error_code, after.completion_source) == ("failed", code, "poll")
    assert await ctx.store.tasks.get_tasks(job.id) == []
