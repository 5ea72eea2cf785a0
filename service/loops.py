"""The shape both background loops share: claim due items, run them concurrently, and sleep
until the next one is due or something new is committed.

`run_once` and `drain` are what tests and `fluxhook tick` call; `run` is the long-lived loop.
Subclasses say how to claim, handle, hand back and find the next due time of their own items.

Stopping (SIGTERM): once `stop` is set, a loop claims nothing more, gives the items in flight
up to `shutdown_grace_s` to finish, cancels what is left and hands those leases back (shielded
from cancellation), so another process can take them at once rather than after the lease. The
same hand-back runs if the loop itself is cancelled.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

from service.context import Signal, WorkContext

log = logging.getLogger("fluxhook.loops")

Item = TypeVar("Item")


class ClaimLoop(ABC, Generic[Item]):
    def __init__(self, ctx: WorkContext, *, stop: anyio.Event | None = None) -> None:
        self.ctx = ctx
        self.inflight = 0
        self.done = 0  # items carried out to the end (not cancelled): what a tick reports
        self.stop = stop if stop is not None else anyio.Event()
        self._idle = anyio.Event()  # set whenever nothing is in flight
        self._idle.set()
        self._held: dict[int, Item] = {}  # started and not yet done: what a stop hands back
        self._group: TaskGroup | None = None  # while `run` runs and claims: where items start

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
    async def hand_back(self, items: list[Item]) -> int:
        """Release the leases of items cancelled before they were done; how many were."""

    @abstractmethod
    async def next_due(self) -> int | None:
        """When the next item this loop could claim becomes due (epoch ms), if any."""

    def released(self, item: Item) -> None:
        """Called when an item is done: wake whatever its writes may have given work to (by
        default every loop in this process, this one included)."""
        self.ctx.nudge()

    async def run_once(self) -> int:
        """Claim every due item (up to the concurrency) and run them; how many ran."""
        if self.stop.is_set():
            return 0
        items = await self.claim(self.concurrency)

        async def start_them(group: TaskGroup) -> None:
            for item in items:
                self._start(group, item)

        await self._supervised(start_them)
        return len(items)

    async def drain(self, *, max_rounds: int = 10_000) -> int:
        """Run due items until none is due now (or the loop is stopped); how many ran in all."""
        total = 0
        for _ in range(max_rounds):
            ran = await self.run_once()
            total += ran
            if ran == 0:
                break
        return total

    async def run(self) -> None:
        """Run until `stop` is set (then wind down, see the module docstring) or cancelled."""
        await self._supervised(self._claim_until_stopped)

    @property
    def running(self) -> bool:
        """Whether `run` is claiming (and `adopt` would start items)."""
        return self._group is not None and not self.stop.is_set()

    def adopt(self, items: Sequence[Item]) -> bool:
        """Carry out `items`, leased for this loop by someone else (see service/notifier.py),
        as if it had claimed them: in flight, handed back if the loop stops before they are
        done. False, starting nothing, unless `run` is claiming."""
        if not self.running:
            return False
        assert self._group is not None
        for item in items:
            self._start(self._group, item)
        return True

    async def _claim_until_stopped(self, group: TaskGroup) -> None:
        self._group = group
        while not self.stop.is_set():
            wake = self.signal.current()  # taken first: a later nudge is never lost
            free = self.concurrency - self.inflight
            claimed: list[Item] = []
            if free > 0:
                try:
                    claimed = await self.claim(free)
                except Exception:
                    log.exception("%s: claiming failed; trying again shortly", type(self).__name__)
            for item in claimed:
                self._start(group, item)
            if claimed and len(claimed) == free:
                continue  # there may be more due right now
            await self._sleep(wake)

    async def _supervised(self, starting: Callable[[TaskGroup], Awaitable[None]]) -> None:
        """Run `starting` (which starts items in the group), then wait for the items; once
        stopped, for at most the grace, then cancel the rest and hand their leases back."""
        try:
            async with anyio.create_task_group() as group:
                await starting(group)
                await _first_of(self._idle, self.stop)
                if self.inflight:  # stopped with work in flight
                    grace = self.ctx.settings.shutdown_grace_s
                    log.info("%s: stopping; %d in flight get up to %gs to finish",
                             type(self).__name__, self.inflight, grace)
                    with anyio.move_on_after(grace):
                        await self._idle.wait()
                    group.cancel_scope.cancel()
        finally:
            self._group = None
            await self._hand_back_held()

    async def _hand_back_held(self) -> None:
        held, self._held = list(self._held.values()), {}
        if not held:
            return
        with anyio.CancelScope(shield=True):
            try:
                count = await self.hand_back(held)
            except Exception:
                log.exception("%s: could not hand back %d lease(s); they expire instead",
                              type(self).__name__, len(held))
                return
        log.info("%s: handed back %d unfinished item(s) for another process to take now",
                 type(self).__name__, count)

    def _start(self, group: TaskGroup, item: Item) -> None:
        if self.inflight == 0:
            self._idle = anyio.Event()
        self.inflight += 1
        self._held[id(item)] = item
        group.start_soon(self._run_and_release, item)

    async def _run_and_release(self, item: Item) -> None:
        try:
            await self.handle(item)
            del self._held[id(item)]  # done: nothing to hand back (a cancelled one stays held)
            self.done += 1
        finally:
            if self.inflight == self.concurrency:
                self.signal.fire()  # a slot is free again: a due item that did not fit may start
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()
            self.released(item)

    async def _sleep(self, wake: anyio.Event) -> None:
        """Until `wake`, `stop` or the next item's due time. Idle, it looks again every
        `worker_idle_s` (the safety net, for work committed without a wake-up) with `next_due`,
        a read, and returns to claim only once something is due: an idle loop no longer runs a
        claim (a write transaction that finds nothing) at each look as well."""
        while True:
            wait = self.ctx.settings.worker_idle_s
            due: int | None = None
            looked = False
            # With every slot busy, due items cannot start anyway; a finished one fires `wake`.
            if self.inflight < self.concurrency:
                try:
                    due, looked = await self.next_due(), True
                except Exception:
                    log.exception("%s: looking for due work failed; claiming instead", type(self).__name__)
                if due is not None:
                    wait = min(wait, max(0.0, (due - self.ctx.clock()) / 1000))
            with anyio.move_on_after(wait):
                await _first_of(wake, self.stop)
            if not looked or wake.is_set() or self.stop.is_set():
                return
            if due is not None and due <= self.ctx.clock():
                return


async def _first_of(*events: anyio.Event) -> None:
    """Until any of `events` is set."""
    if any(event.is_set() for event in events):
        return
    async with anyio.create_task_group() as group:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            group.cancel_scope.cancel()

        for event in events:
            group.start_soon(wait, event)
