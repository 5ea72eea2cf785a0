"""The worker: claims due tasks from the outbox and runs them, at least once, idempotently.

`run_once` and `drain` are what tests and `fluxhook tick` call; `run` is the long-lived loop,
woken at once by in-process commits and otherwise by the earliest due task.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from service.backoff import next_delay
from service.context import WorkContext
from service.fetcher import fetch_outputs
from service.poller import poll_job
from service.submitter import submit_job
from storage.records import TaskRecord
from storage.store import TaskKind

log = logging.getLogger("fluxhook.worker")

Handler = Callable[[WorkContext, TaskRecord], Awaitable[None]]

HANDLERS: dict[str, Handler] = {
    TaskKind.SUBMIT.value: submit_job,
    TaskKind.POLL.value: poll_job,
    TaskKind.FETCH.value: fetch_outputs,
}


class Worker:
    def __init__(self, ctx: WorkContext) -> None:
        self.ctx = ctx
        self._inflight = 0

    async def run_task(self, task: TaskRecord) -> None:
        """Run one task; an unexpected failure is logged and the task retried later."""
        handler = HANDLERS.get(task.kind)
        try:
            if handler is None:
                raise LookupError(f"no handler for task kind {task.kind!r}")
            await handler(self.ctx, task)
        except Exception as exc:
            # The task stays leased until rescheduled here; if even that fails, the lease
            # expires and another worker claims it.
            log.exception("task %s (%s, job %s) failed unexpectedly", task.id, task.kind, task.job_id)
            delay = next_delay(task.attempts, base=self.ctx.settings.retry_base_s,
                               cap=self.ctx.settings.retry_max_s, rand=self.ctx.rand.random)
            with anyio.CancelScope(shield=True):
                try:
                    await self.ctx.store.retry_task(
                        task.id, due_at=self.ctx.clock() + self.ctx.ms(delay),
                        error=f"unexpected {type(exc).__name__}",
                    )
                except Exception:
                    log.exception("could not reschedule task %s", task.id)

    async def run_once(self, *, limit: int | None = None) -> int:
        """Claim every due task (up to `limit`) and run them concurrently; how many ran."""
        settings = self.ctx.settings
        tasks = await self.ctx.store.claim_due_tasks(
            now=self.ctx.clock(), limit=limit or settings.worker_concurrency,
            lease_ms=self.ctx.ms(settings.task_lease_s),
        )
        async with anyio.create_task_group() as group:
            for task in tasks:
                group.start_soon(self.run_task, task)
        return len(tasks)

    async def drain(self, *, max_rounds: int = 10_000) -> int:
        """Run due work until none is due now (what `fluxhook tick` does). Total tasks run."""
        total = 0
        for _ in range(max_rounds):
            ran = await self.run_once()
            total += ran
            if ran == 0:
                break
        return total

    async def run(self) -> None:
        """Run forever (until cancelled), at most `worker_concurrency` tasks at a time."""
        settings = self.ctx.settings
        async with anyio.create_task_group() as group:
            while True:
                wake = self.ctx.signals.work.current()  # taken first: a later nudge is never lost
                free = settings.worker_concurrency - self._inflight
                claimed: list[TaskRecord] = []
                if free > 0:
                    try:
                        claimed = await self.ctx.store.claim_due_tasks(
                            now=self.ctx.clock(), limit=free,
                            lease_ms=self.ctx.ms(settings.task_lease_s),
                        )
                    except Exception:
                        log.exception("claiming tasks failed; trying again shortly")
                for task in claimed:
                    self._inflight += 1
                    group.start_soon(self._run_and_release, task)
                if claimed and len(claimed) == free:
                    continue  # there may be more due right now
                await self._sleep_until_due(wake)

    async def _run_and_release(self, task: TaskRecord) -> None:
        try:
            await self.run_task(task)
        finally:
            self._inflight -= 1
            self.ctx.nudge()

    async def _sleep_until_due(self, wake: anyio.Event) -> None:
        wait = self.ctx.settings.worker_idle_s
        if self._inflight < self.ctx.settings.worker_concurrency:
            try:
                due = await self.ctx.store.next_due_at()
            except Exception:
                due = None
            if due is not None:
                wait = min(wait, max(0.0, (due - self.ctx.clock()) / 1000))
        with anyio.move_on_after(wait):
            await wake.wait()
