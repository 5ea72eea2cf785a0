"""The worker: claims due tasks from the outbox and runs them, at least once, idempotently."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import cached_property

import anyio

from service.backoff import next_delay
from service.catalog import Catalog
from service.context import Signal, WorkContext
from service.fetcher import fetch_outputs
from service.loops import ClaimLoop
from service.poller import poll_job
from service.settings import Settings
from service.submitter import submit_job
from storage.records import SubmitCaps, TaskKind, TaskLease, TaskRecord

log = logging.getLogger("fluxhook.worker")

# A handler returns True when the work it did left nothing for this process's notifier to
# look for (service/fetcher.py hands the deliveries it makes straight to it).
Handler = Callable[[WorkContext, TaskRecord], Awaitable[bool | None]]

HANDLERS: dict[str, Handler] = {
    TaskKind.SUBMIT.value: submit_job,
    TaskKind.POLL.value: poll_job,
    TaskKind.FETCH.value: fetch_outputs,
}


class Worker(ClaimLoop[TaskRecord]):
    """Submits, polls and downloads: the tasks the outbox holds (with `only_job`, only that
    job's: serverless mode's request doing the work it caused, service/inline.py)."""

    def __init__(
        self, ctx: WorkContext, *, stop: anyio.Event | None = None, only_job: str | None = None
    ) -> None:
        super().__init__(ctx, stop=stop)
        self.only_job = only_job
        self._handed_off: set[int] = set()  # tasks whose deliveries went to the notifier directly

    @property
    def concurrency(self) -> int:
        return self.ctx.settings.worker_concurrency

    @property
    def signal(self) -> Signal:
        return self.ctx.signals.work

    @cached_property
    def caps(self) -> SubmitCaps:
        return submit_caps(self.ctx.settings, self.ctx.catalog)

    async def run(self) -> None:
        """As `ClaimLoop.run`, and this process's `TaskHandoff` meanwhile."""
        ctx = self.ctx
        if ctx.task_handoff is None and self.only_job is None:
            ctx.task_handoff = self
        try:
            await super().run()
        finally:
            if ctx.task_handoff is self:
                ctx.task_handoff = None

    def offer(self, now: int) -> TaskLease | None:
        """The lease applying a callback may take for this worker (`TaskHandoff.offer`): as
        many downloads as it has free slots."""
        free = self.concurrency - self.inflight
        if not self.running or free <= 0:
            return None
        return TaskLease(until=now + self.ctx.ms(self.ctx.settings.task_lease_s), limit=free)

    def take(self, tasks: Sequence[TaskRecord]) -> bool:
        """Run `tasks`, leased as `offer` said, as if this worker had claimed them."""
        return self.adopt(tasks)

    async def claim(self, limit: int) -> list[TaskRecord]:
        lease_ms = self.ctx.ms(self.ctx.settings.task_lease_s)
        if self.only_job is not None:
            return await self.ctx.store.tasks.claim_job_tasks(
                self.only_job, now=self.ctx.clock(), limit=limit, lease_ms=lease_ms, caps=self.caps
            )
        return await self.ctx.store.tasks.claim_due_tasks(
            now=self.ctx.clock(), limit=limit, lease_ms=lease_ms, caps=self.caps
        )

    async def next_due(self) -> int | None:
        return await self.ctx.store.tasks.next_due_at(now=self.ctx.clock(), caps=self.caps)

    async def handle(self, item: TaskRecord) -> None:
        await self.run_task(item)

    def released(self, item: TaskRecord) -> None:
        if item.id not in self._handed_off:
            self.ctx.nudge()
            return
        # A stored download made an event and the deliveries the notifier now has, and no task:
        # waking the notifier or this loop would only make them look for nothing.
        self._handed_off.discard(item.id)
        self.ctx.signals.events.fire()

    async def hand_back(self, items: list[TaskRecord]) -> int:
        # A handed-back submit may have reached the provider before it was cancelled; the
        # submitter decides what a submit with an unknown outcome does when it runs again.
        return await self.ctx.store.tasks.release_tasks([(task.id, task.lease_until) for task in items])

    async def run_task(self, task: TaskRecord) -> None:
        """Run one task; an unexpected failure is logged and the task retried later."""
        handler = HANDLERS.get(task.kind)
        try:
            if handler is None:
                raise LookupError(f"no handler for task kind {task.kind!r}")
            if await handler(self.ctx, task):
                self._handed_off.add(task.id)
        except Exception as exc:
            # The task stays leased until rescheduled here; if even that fails, the lease
            # expires and another worker claims it.
            log.exception("task %s (%s, job %s) failed unexpectedly", task.id, task.kind, task.job_id)
            delay = next_delay(
                task.attempts,
                base=self.ctx.settings.retry_base_s,
                cap=self.ctx.settings.retry_max_s,
                rand=self.ctx.rand.random,
            )
            with anyio.CancelScope(shield=True):
                try:
                    await self.ctx.store.tasks.retry_task(
                        task.id,
                        due_at=self.ctx.clock() + self.ctx.ms(delay),
                        error=f"unexpected {type(exc).__name__}",
                    )
                except Exception:
                    log.exception("could not reschedule task %s", task.id)


def submit_caps(settings: Settings, catalog: Catalog) -> SubmitCaps:
    """Each configured provider's cap on active jobs, and the catalog's lower caps on some of
    its models (BFL's flux-kontext-max: 6), which apply only where the provider is capped."""
    providers = {name: p.max_active_tasks for name, p in settings.providers.items()}
    models = {
        (name, model.name): min(model.max_active_tasks, cap)
        for name, cap in providers.items() if cap is not None
        for model in catalog.models(name) if model.max_active_tasks is not None
    }
    return SubmitCaps(providers, models)
