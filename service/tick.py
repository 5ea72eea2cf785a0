"""One tick: run the work that is due (retries, fallback polls, deliveries due later, pruning)
for at most a number of seconds, and say what was done and what is still due.

What `fluxhook tick` (cron) and `POST /v1/tick` (a platform's scheduler) run; in serverless mode
(service/inline.py) the scheduled tick is what finishes a job whose callback never came. The
work is claimed as the workers claim it, so ticks running at once (two schedulers, a slow tick
overlapping the next) never carry out the same task or delivery twice.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import anyio

from service.callbacks import apply_all
from service.context import WorkContext
from service.documents import rfc3339
from service.inline import CLAIMING_SHARE, run_rounds
from service.notifier import Notifier
from service.retention import Pruned, prune
from service.worker import Worker

# The report's count of tasks still scheduled stops here (submits, and polls and downloads
# together): a tick with nothing due then costs the same with 1,000 jobs in flight as with
# 100,000 (bench/idle.py). /metrics (`fluxhook_scheduled_tasks`) counts them all.
SCHEDULED_COUNTED_UP_TO = 1000


@dataclass(frozen=True)
class TickReport:
    tasks: int  # submits, polls and downloads carried out
    deliveries: int  # delivery attempts made (a failed one is retried on its schedule)
    pruned: Pruned | None  # None: the time ran out (or the tick was stopped) before pruning
    finished: bool  # nothing that was due was left undone
    seconds: float
    due_tasks: dict[str, int]  # per kind, due now and not taken (a later tick's work)
    due_deliveries: int
    scheduled_tasks: dict[str, int]  # per kind, the tasks waiting, due now or later, up to:
    counted_up_to: int  # submits, and polls and downloads together, counted up to this many
    next_due_at: int | None  # when the next task or delivery falls due (epoch ms)

    def as_json(self) -> dict[str, Any]:
        return {
            "ran": {"tasks": self.tasks, "deliveries": self.deliveries,
                    "pruned": dataclasses.asdict(self.pruned) if self.pruned is not None else None},
            "finished": self.finished,
            "seconds": round(self.seconds, 3),
            "due": {"tasks": self.due_tasks, "deliveries": self.due_deliveries},
            "scheduled": {"tasks": self.scheduled_tasks, "counted_up_to": self.counted_up_to},
            "next_due_at": rfc3339(self.next_due_at),
        }


async def tick(ctx: WorkContext, *, seconds: float, stop: anyio.Event | None = None) -> TickReport:
    """Run due work for at most `seconds` (new work is claimed in the first part of it, see
    service/inline.py `run_rounds`), then prune if time is left. `stop` (a signal, say) ends
    it early the same way."""
    began = time.monotonic()
    stop = stop or anyio.Event()
    # Callbacks recorded and not yet applied (a crash, or serverless mode's request cut off)
    # first: what they cause is the tick's work too.
    with anyio.move_on_after(seconds * CLAIMING_SHARE):
        await apply_all(ctx)
    worker, notifier = Worker(ctx, stop=stop), Notifier(ctx, stop=stop)
    finished = await run_rounds([worker, notifier], seconds=seconds, stop=stop)
    pruned = None
    if finished:
        with anyio.move_on_after(max(0.0, seconds - (time.monotonic() - began))):
            pruned = await prune(ctx)
    now = ctx.clock()
    due_tasks = await ctx.store.tasks.count_due(now=now)
    due_deliveries = await ctx.store.deliveries.count_due_deliveries(now=now)
    next_times = [t for t in (await worker.next_due(),
                              await ctx.store.deliveries.pending_delivery_due(now=now)) if t is not None]
    return TickReport(
        tasks=worker.done,
        deliveries=notifier.done,
        pruned=pruned,
        finished=finished and pruned is not None,
        seconds=time.monotonic() - began,
        due_tasks=due_tasks,
        due_deliveries=due_deliveries,
        scheduled_tasks=await ctx.store.tasks.count_tasks(most=SCHEDULED_COUNTED_UP_TO),
        counted_up_to=SCHEDULED_COUNTED_UP_TO,
        next_due_at=min(next_times, default=None),
    )
