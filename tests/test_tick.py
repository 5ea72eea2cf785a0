"""One tick (service/tick.py) and a request's own work (service/inline.py), on each backend,
with a hand-driven clock and the notifications answered by a mock receiver."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest

from service.app import open_context
from service.context import WorkContext
from service.ids import new_job_id, new_webhook_secret
from service.inline import run_inline
from service.jobs import Submitted
from service.settings import Settings
from service.tick import tick
from storage.records import JobRecord, NewJob, Schedule, SubscriptionRecord
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio

HOOK = "https://receiver.example.org/hook"


@pytest.fixture
def sent() -> list[httpx.Request]:
    return []


@pytest.fixture
async def serverless(
    make_settings: Callable[..., Settings], clock: FakeClock, sent: list[httpx.Request]
) -> AsyncIterator[WorkContext]:
    def receive(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    settings = make_settings(FLUXHOOK_MODE="serverless", FLUXHOOK_TICK_TOKEN="t")
    async with open_context(settings, notify_transport=httpx.MockTransport(receive), clock=clock,
                            rand=random.Random(7)) as ctx:
        await ctx.store.subscriptions.create_subscription(SubscriptionRecord(
            "sub_1", HOOK, (), None, "whsec_" + "A" * 32, None, None, "enabled", None, None,
            clock(), clock()))
        yield ctx


async def submitted_job(ctx: WorkContext, n: int) -> JobRecord:
    """A job the provider accepted: its job.submitted event has a delivery due now, its fallback
    poll is due later."""
    now = ctx.clock()
    new = NewJob(new_job_id(now + n), "bfl", "flux-pro-1.1", {"prompt": f"fox {n}"}, {},
                 new_webhook_secret(), None, None, now + 900_000)
    job, _ = await ctx.store.jobs.create_job(new, now=now)
    [task] = await ctx.store.tasks.claim_job_tasks(job.id, now=now, limit=1, lease_ms=60_000)
    await ctx.store.tasks.finish_task(task.id)
    recorded = await ctx.store.jobs.record_observation(job.id, Submitted(f"p-{n}"), now=now,
                                                       schedule=Schedule(poll_at=now + 15_000))
    assert recorded is not None
    return recorded.job


def delivered_jobs(sent: list[httpx.Request]) -> list[str]:
    return [json.loads(request.content)["data"]["id"] for request in sent]


async def test_a_requests_own_work_sends_only_its_jobs_notifications(serverless: WorkContext,
                                                                     sent: list[httpx.Request]):
    mine, other = await submitted_job(serverless, 1), await submitted_job(serverless, 2)
    await run_inline(serverless, mine.id)
    assert delivered_jobs(sent) == [mine.id]
    assert await serverless.store.deliveries.count_due_deliveries(now=serverless.clock()) == 1
    await run_inline(serverless, mine.id)  # nothing of its own left: the other job's stays due
    assert delivered_jobs(sent) == [mine.id]
    assert other.id not in delivered_jobs(sent)


async def test_without_serverless_mode_a_request_leaves_its_work_to_the_workers(
    make_settings: Callable[..., Settings], clock: FakeClock, sent: list[httpx.Request]
):
    async with open_context(make_settings(), clock=clock) as ctx:
        job = await submitted_job(ctx, 1)
        await run_inline(ctx, job.id)
        assert [t.kind for t in await ctx.store.tasks.get_tasks(job.id)] == ["poll"]
        assert sent == []


async def test_a_tick_runs_what_is_due_and_reports_it_and_what_waits(serverless: WorkContext,
                                                                      clock: FakeClock,
                                                                      sent: list[httpx.Request]):
    jobs = [await submitted_job(serverless, n) for n in range(3)]
    report = await tick(serverless, seconds=30)
    assert sorted(delivered_jobs(sent)) == sorted(job.id for job in jobs)
    assert (report.tasks, report.deliveries, report.finished) == (0, 3, True)
    assert report.due_tasks == {} and report.due_deliveries == 0
    assert report.scheduled_tasks == {"poll": 3}  # the fallback polls, due later
    as_json: dict[str, Any] = report.as_json()
    assert as_json["ran"]["deliveries"] == 3 and as_json["ran"]["pruned"] is not None
    assert as_json["next_due_at"] is not None and as_json["due"] == {"tasks": {}, "deliveries": 0}

    again = await tick(serverless, seconds=30)  # nothing due: nothing sent twice
    assert (again.tasks, again.deliveries) == (0, 0) and len(sent) == 3


async def test_a_stopped_tick_claims_nothing_and_says_it_did_not_finish(serverless: WorkContext,
                                                                        sent: list[httpx.Request]):
    await submitted_job(serverless, 1)
    stop = anyio.Event()
    stop.set()
    report = await tick(serverless, seconds=30, stop=stop)
    assert (report.deliveries, report.finished, report.pruned) == (0, False, None)
    assert report.due_deliveries == 1 and sent == []


async def test_a_request_waits_for_its_jobs_work_that_another_claim_is_doing(serverless: WorkContext,
                                                                            sent: list[httpx.Request]):
    job = await submitted_job(serverless, 1)
    # Another request (or a tick) holds the job's delivery: this request has nothing to claim.
    [held] = await serverless.store.deliveries.claim_due_deliveries(
        now=serverless.clock(), limit=10, lease_ms=60_000, busy={}, per_destination=10)
    released = anyio.Event()

    async def the_other_hands_it_back() -> None:
        await anyio.sleep(0.3)
        await serverless.store.deliveries.release_deliveries([(held.id, held.lease_until)])
        released.set()

    async with anyio.create_task_group() as group:
        group.start_soon(the_other_hands_it_back)
        await run_inline(serverless, job.id)
        assert released.is_set()  # it did not answer while the job's work was in other hands
    assert delivered_jobs(sent) == [job.id]  # and what came back due, it did itself
