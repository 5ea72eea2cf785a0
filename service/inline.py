"""Serverless mode (FLUXHOOK_MODE=serverless): the request that causes work does it before it
answers, because nothing runs between requests.

`POST /v1/jobs` submits its job; a provider callback, once recorded, downloads and stores the
outputs and sends the notifications it caused. The work is claimed exactly as a worker claims
it (storage/sql/tasks.py `claim_job_tasks`, the notifier's claim limited to the job), so a
request on another instance, a tick or a worker racing this one never carries out the same
task or delivery twice. Whatever the budget does not cover (a retry due later, a fallback poll,
a delivery whose receiver failed) stays due work in the store for the next tick
(service/tick.py); work cut off by the budget is handed back, due at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anyio

from service.context import WorkContext
from service.loops import ClaimLoop
from service.notifier import Notifier
from service.worker import Worker

log = logging.getLogger("fluxhook.inline")

# New work is claimed only in this first share of a budget; what is in flight then gets the
# rest (up to the shutdown grace) before it is cancelled and handed back.
CLAIMING_SHARE = 0.8


async def run_inline(ctx: WorkContext, job_id: str) -> None:
    """In serverless mode, carry out the job's due work now, within FLUXHOOK_INLINE_BUDGET_SECONDS;
    otherwise nothing (the workers do it). Never raises: what fails stays due for the tick.

    Work of this job that another request or a tick is carrying out (a provider's progress
    callback for the same job, say, whose request took the download this callback made due), or
    that was due but not claimable a moment ago (PostgreSQL's SKIP LOCKED passes over a row that
    another transaction is writing), is waited for and looked at again, so that when this returns
    the job's work is done, not merely started elsewhere."""
    if not ctx.settings.serverless:
        return
    budget = ctx.settings.inline_budget_s
    try:
        with anyio.move_on_after(budget) as scope:
            ends = anyio.current_time() + budget
            while await _own_rounds(ctx, job_id, seconds=ends - anyio.current_time()):
                wake = ctx.signals.work.current()  # taken first: a finish that follows is seen
                if not await _unfinished(ctx, job_id):
                    return
                with anyio.move_on_after(ctx.settings.worker_idle_s):
                    await wake.wait()
    except Exception:
        log.exception("job %s: inline work failed; what is left stays due for the tick", job_id)
        return
    if scope.cancelled_caught or anyio.current_time() >= ends:
        log.info("job %s: inline budget of %gs spent; the rest stays due for the tick", job_id, budget)


async def _own_rounds(ctx: WorkContext, job_id: str, *, seconds: float) -> bool:
    stop = anyio.Event()
    loops: list[ClaimLoop[Any]] = [Worker(ctx, stop=stop, only_job=job_id),
                                   Notifier(ctx, stop=stop, only_job=job_id)]
    return await run_rounds(loops, seconds=seconds, stop=stop)


async def _unfinished(ctx: WorkContext, job_id: str) -> bool:
    now = ctx.clock()
    return bool(await ctx.store.tasks.unfinished_for_job(job_id, now=now)
                or await ctx.store.deliveries.unfinished_for_job(job_id, now=now))


async def run_rounds(loops: Sequence[ClaimLoop[Any]], *, seconds: float, stop: anyio.Event) -> bool:
    """Drain each loop in turn, again and again (a download causes a delivery), until none has
    anything due, for at most `seconds`. The loops must have been made with `stop`: it is set
    once `CLAIMING_SHARE` of the time is spent, so they claim nothing new; at `seconds` what is
    still in flight is cancelled and handed back. True when nothing due was left undone."""
    finished = False
    with anyio.move_on_after(seconds):
        async with anyio.create_task_group() as group:
            group.start_soon(_set_after, stop, seconds * CLAIMING_SHARE)
            while not stop.is_set():
                ran = 0
                for loop in loops:
                    ran += await loop.drain()
                if ran == 0 and not stop.is_set():
                    finished = True
                    break
            group.cancel_scope.cancel()
    return finished


async def _set_after(event: anyio.Event, seconds: float) -> None:
    await anyio.sleep(seconds)
    event.set()
