"""An idle worker's safety-net look (every FLUXHOOK_WORKER_IDLE_SECONDS) is a read of when the
next item falls due; it claims (a write transaction) only once something is due."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from service.resources import open_context
from service.settings import Settings
from service.worker import Worker
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

