"""The shape both background loops share: claim due items, run them concurrently, and sleep
until the next one is due or something new is committed.

`run_once` and `drain` are what tests and `fluxhook tick` call; `run` is the long-lived loop.
Subclasses say how to claim, handle and find the next due time of their own items.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

import anyio

from service.context import Signal, WorkContext

log = logging.getLogger("fluxhook.loops")

Item = TypeVar("Item")


class ClaimLoop(ABC, Generic[Item]):
    def __init__(self, ctx: WorkContext) -> None:
        self.ctx = ctx
        self.inflight = 0

    @property
    @abstractmethod
    def concurrency(self) -> int:
        """At most this many items in flight."""

    @property
    @abstractmethod
    def signal(self) -> Signal:
        """Fired when work for this loop is committed in this process."""

    @abstractmethod
    async def claim(self, limit: int) -> list[Item]:
        """Lease up to `limit` due items."""

    @abstractmethod
    async def handle(self, item: Item) -> None:
        """Carry one item out; must not raise (log and reschedule instead)."""

    @abstractmethod
    async def next_due(self) -> int | None:
        """When the next item this loop could claim becomes due (epoch ms), if any."""

    def released(self, item: Item) -> None:
        """Called when an item is done, before the loop is woken again."""
        self.ctx.nudge()

    async def run_once(self) -> int:
        """Claim every due item (up to the concurrency) and run them; how many ran."""
        items = await self.claim(self.concurrency)
        async with anyio.create_task_group() as group:
            for item in items:
                self.inflight += 1
                group.start_soon(self._run_and_release, item)
        return len(items)

    async def drain(self, *, max_rounds: int = 10_000) -> int:
        """Run due items until none is due now; how many ran in all."""
        total = 0
        for _ in range(max_rounds):
            ran = await self.run_once()
            total += ran
            if ran == 0:
                break
        return total

    async def run(self) -> None:
        """Run forever (until cancelled)."""
        async with anyio.create_task_group() as group:
            while True:
                wake = self.signal.current()  # taken first: a later nudge is never lost
                free = self.concurrency - self.inflight
                claimed: list[Item] = []
                if free > 0:
                    try:
                        claimed = await self.claim(free)
                    except Exception:
                        log.exception("%s: claiming failed; trying again shortly", type(self).__name__)
                for item in claimed:
                    self.inflight += 1
                    group.start_soon(self._run_and_release, item)
                if claimed and len(claimed) == free:
                    continue  # there may be more due right now
                await self._sleep(wake)

    async def _run_and_release(self, item: Item) -> None:
        try:
            await self.handle(item)
        finally:
            self.inflight -= 1
            self.released(item)

    async def _sleep(self, wake: anyio.Event) -> None:
        wait = self.ctx.settings.worker_idle_s
        # With every slot busy, due items cannot start anyway; a finished one fires `wake`.
        if self.inflight < self.concurrency:
            try:
                due = await self.next_due()
            except Exception:
                due = None
            if due is not None:
                wait = min(wait, max(0.0, (due - self.ctx.clock()) / 1000))
        with anyio.move_on_after(wait):
            await wake.wait()
