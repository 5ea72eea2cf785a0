"""Data lifecycle: `DELETE /v1/jobs/{id}` and the pruner that enforces the retention settings.

What is old is decided here, from the settings (0 keeps forever); the store removes rows in
batches of `PRUNE_BATCH`, each its own short transaction, and this yields between batches so
callbacks and the workers' writes go in between rather than waiting behind a long delete.

Images are shared by content (sha256), so a file goes only when nothing references it any
more: no job whose outputs are kept (a job still running, or final and within retention) and
no upload whose URL still works. The order is: (1) one transaction marks the outputs removed
and queues their sha256s; (2) a later transaction re-checks which queued images are still
unreferenced; (3) only after that commit are those files removed; (4) a last transaction takes
them off the queue. A crash between any two steps leaves at worst a queued image whose file is
still there (or already gone), which the next prune finishes; it never leaves a kept output
without its file, which the reverse order (file first) could. One race remains: a download or
upload of identical bytes renames a fresh file into place just before its reference commits;
so a file written in the last `BLOB_SETTLE_S` seconds is left for a later prune, which sees
the new reference by then and keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from service.context import WorkContext
from service.errors import Conflict, NotFound
from storage.records import JobRecord

log = logging.getLogger("fluxhook.retention")

PRUNE_BATCH = 500
BLOB_SETTLE_S = 30.0


async def delete_job(ctx: WorkContext, job_id: str) -> JobRecord:
    """Remove a final job's images (those no other job or upload shares); the job document,
    its attempts and its events stay. 404 if unknown, 409 if not final; repeating is harmless."""
    job = await ctx.store.jobs.get_job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}", details=[{"field": "job_id", "rule": "exists"}])
    if not job.state.terminal:
        raise Conflict(
            f"job is still {job.status.value}: cancel it first (POST /v1/jobs/{job_id}/cancel)",
            code="job_not_final",
            details=[{"field": "status", "rule": "terminal", "current": job.status.value}],
        )
    removed = await ctx.store.retention.remove_job_outputs(job_id, now=ctx.clock())
    assert removed is not None  # jobs are never deleted
    outputs = (await ctx.store.jobs.get_outputs([job_id]))[job_id]
    await remove_unreferenced_blobs(ctx, only=sorted({output.sha256 for output in outputs}))
    return removed


@dataclass(frozen=True)
class Pruned:
    """What one prune removed."""

    events: int = 0
    callbacks: int = 0
    polls: int = 0  # answered polls, kept as long as callbacks
    delivery_attempts: int = 0
    jobs_images: int = 0  # jobs whose outputs were removed
    blobs: int = 0  # image files removed
    partials: int = 0  # partial downloads nobody holds


async def prune(ctx: WorkContext, *, batch: int = PRUNE_BATCH) -> Pruned:
    """Remove whatever the retention settings call old, in batches."""
    settings, store, now = ctx.settings, ctx.store, ctx.clock()

    def older_than(seconds: float) -> int:
        return now - ctx.ms(seconds)

    events = callbacks = polls = attempts = jobs = 0
    if settings.retain_events_s:
        cutoff = older_than(settings.retain_events_s)
        events = await _in_batches(batch, lambda: store.retention.prune_events(before=cutoff, limit=batch))
    if settings.retain_callbacks_s:
        cutoff = older_than(settings.retain_callbacks_s)
        callbacks = await _in_batches(
            batch, lambda: store.retention.prune_callbacks(before=cutoff, limit=batch))
        polls = await _in_batches(batch, lambda: store.retention.prune_polls(before=cutoff, limit=batch))
    if settings.retain_delivery_attempts_s:
        cutoff = older_than(settings.retain_delivery_attempts_s)
        attempts = await _in_batches(
            batch, lambda: store.retention.prune_delivery_attempts(before=cutoff, limit=batch)
        )
    if settings.retain_images_s:
        cutoff = older_than(settings.retain_images_s)
        jobs = await _in_batches(
            batch, lambda: store.retention.remove_old_outputs(completed_before=cutoff, now=now, limit=batch)
        )
    blobs = await remove_unreferenced_blobs(ctx, batch=batch)
    partials = await ctx.blobs.remove_partials()
    pruned = Pruned(events, callbacks, polls, attempts, jobs, blobs, partials)
    if pruned != Pruned():
        log.info("pruned: %s", pruned)
    return pruned


async def remove_unreferenced_blobs(
    ctx: WorkContext, *, batch: int = PRUNE_BATCH, only: Sequence[str] | None = None
) -> int:
    """Remove the files of queued images (or of those among `only`) nothing references any
    more; how many."""
    removed = 0
    after: str | None = ""
    while after is not None:
        unreferenced, after = await ctx.store.retention.unreferenced_blobs(
            after=after, now=ctx.clock(), limit=batch, only=only
        )
        gone = [sha256 for sha256 in unreferenced if await ctx.blobs.remove(sha256, settled_s=BLOB_SETTLE_S)]
        if gone:
            await ctx.store.retention.forget_blobs(gone)
        removed += len(gone)
    return removed


async def prune_periodically(ctx: WorkContext, stop: anyio.Event) -> None:
    """Prune every `prune_interval_s` (a first run right away) until `stop` is set; a prune in
    progress then stops between batches, which is safe at any point (see above)."""
    async with anyio.create_task_group() as group:

        async def stop_when_asked() -> None:
            await stop.wait()
            group.cancel_scope.cancel()

        group.start_soon(stop_when_asked)
        while True:
            try:
                await prune(ctx)
            except Exception:
                log.exception("pruning failed; trying again at the next interval")
            await anyio.sleep(ctx.settings.prune_interval_s)


async def _in_batches(batch: int, step: Callable[[], Awaitable[int]]) -> int:
    total = 0
    while True:
        done = await step()
        total += done
        if done < batch:
            return total
        await anyio.lowlevel.checkpoint()  # let waiting transactions (a callback's, say) go first
