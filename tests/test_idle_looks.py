"""An idle worker's safety-net look (every FLUXHOOK_WORKER_IDLE_SECONDS) is a read of when the
next item falls due; it claims (a write transaction) only once something is due. The applier's
is a read of whether a callback waits; it applies (a write transaction) only once one does."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from service.callbacks import apply_forever
from service.resources import open_context
from service.settings import Settings
from service.worker import Worker
from storage.records import Judgement
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio

IDLE_S = 0.02


async def test_an_idle_worker_looks_without_claiming_and_claims_once_work_is_due(
    make_settings: Callable[..., Settings], clock: FakeClock, make_job: Callable[..., Any]
):
    settings = make_settings(FLUXHOOK_WORKER_IDLE_SECONDS=str(IDLE_S))
    async with open_context(settings, clock=clock, rand=random.Random(7)) as ctx:
        worker = Worker(ctx)
        claims: list[int] = []
        looks: list[int] = []
        next_due = worker.next_due

        async def claim(limit: int) -> list[Any]:
            claims.append(limit)
            return []  # nothing is carried out: only whether it claims is looked at

        async def looked() -> int | None:
            looks.append(1)
            return await next_due()

        worker.claim = claim  # type: ignore[method-assign]
        worker.next_due = looked  # type: ignore[method-assign]
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run)
            with anyio.fail_after(10):
                while len(looks) < 10:
                    await anyio.sleep(IDLE_S)
            idle_claims = len(claims)

            await make_job()  # its submit due now, written through another connection
            with anyio.fail_after(10):
                while len(claims) == idle_claims:
                    await anyio.sleep(IDLE_S)
            worker.stop.set()

    assert idle_claims == 1  # the first, at start: ten looks since, none of them a claim
    assert len(claims) > idle_claims



async def test_an_idle_applier_reads_whether_callbacks_wait_and_applies_once_one_does(
    make_settings: Callable[..., Settings], clock: FakeClock, make_job: Callable[..., Any], ctx: Any
):
    """Applying is a write transaction that takes the event log's lock first (PostgreSQL): an
    idle look at an empty inbox must not take it, in the way of the transactions writing events."""
    settings = make_settings(FLUXHOOK_WORKER_IDLE_SECONDS=str(IDLE_S))
    async with open_context(settings, clock=clock, rand=random.Random(7)) as mine:
        applies: list[int] = []
        looks: list[int] = []
        jobs = mine.store.jobs
        apply_callbacks, callbacks_waiting = jobs.apply_callbacks, jobs.callbacks_waiting

        async def apply(**kwargs: Any) -> Any:
            applies.append(1)
            return await apply_callbacks(**kwargs)

        async def look() -> bool:
            looks.append(1)
            return await callbacks_waiting()

        jobs.apply_callbacks = apply  # type: ignore[method-assign]
        jobs.callbacks_waiting = look  # type: ignore[method-assign]
        stop = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(apply_forever, mine, stop)
            with anyio.fail_after(10):
                while len(looks) < 10:
                    await anyio.sleep(IDLE_S)
            idle_applies = len(applies)

            # Recorded through another connection, with no wake-up: the next look finds it.
            job = await make_job()
            await ctx.store.jobs.record_callback(job.id, provider="bfl", body=b"{}", now=clock(),
                                                 judge=lambda _job, _attempts: Judgement("unsigned", None))
            with anyio.fail_after(10):
                while await ctx.store.jobs.pending_callbacks():
                    await anyio.sleep(IDLE_S)
            stop.set()

    assert idle_applies == 1  # the first, at start: ten looks since, none of them a transaction
    assert len(applies) > idle_applies
