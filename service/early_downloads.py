"""Downloads started early: while the transaction that makes them due commits.

A worker's applier (service/callbacks.py) applies a `Ready` callback and leases the download
it causes to its own worker in the same transaction. The image's URLs are known as soon as
that transaction has read the job, so the download starts then, beside the rest of the
transaction (the job's writes, its event, its tasks, the COMMIT), rather than after it: on
PostgreSQL those are a few milliseconds of round trips.

Nothing is recorded early. The download's task, once it runs (service/fetcher.py), takes the
early result instead of downloading again, and records the outputs as it always does. An
early download whose transaction was not committed, or leased the download to no one here, is
cancelled; one that failed is made again by the task, which handles the failure as usual.
Blobs are named by their content: what an early download stored is the very blob the
download's task stores, in whichever process it runs (the callback stays in the inbox until a
transaction applying it commits).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.downloads import Downloaded, download_image

if TYPE_CHECKING:
    from service.context import WorkContext

log = logging.getLogger("fluxhook.downloads")


@dataclass
class _Early:
    urls: tuple[str, ...]
    task: asyncio.Task[list[Downloaded]]


@dataclass
class EarlyStarts:
    """What one applying transaction calls, in the database's thread, for each download it
    makes due (`JobStore.apply_callbacks` `downloading`); `job_ids` are those it started."""

    downloads: EarlyDownloads
    ctx: WorkContext
    loop: asyncio.AbstractEventLoop
    job_ids: set[str] = field(default_factory=set)

    def __call__(self, job_id: str, provider: str, urls: tuple[str, ...]) -> None:
        self.job_ids.add(job_id)
        self.loop.call_soon_threadsafe(self.downloads.start, self.ctx, job_id, provider, urls)


class EarlyDownloads:
    """This process's early downloads, by job."""

    def __init__(self) -> None:
        self._running: dict[str, _Early] = {}

    def starts(self, ctx: WorkContext) -> EarlyStarts:
        """For one applying transaction, run from this event loop."""
        return EarlyStarts(self, ctx, asyncio.get_running_loop())

    def start(self, ctx: WorkContext, job_id: str, provider: str, urls: tuple[str, ...]) -> None:
        found = self._running.get(job_id)
        if found is not None and found.urls == urls:
            return  # the same transaction run again (a serialization failure): already on its way
        if found is not None:
            found.task.cancel()
        task = asyncio.ensure_future(download_outputs(ctx, provider, urls))
        task.add_done_callback(_retrieve)
        self._running[job_id] = _Early(urls, task)

    def cancel(self, job_ids: Collection[str]) -> None:
        """Cancel the early downloads of `job_ids`: no task here will take them."""
        for job_id in job_ids:
            early = self._running.pop(job_id, None)
            if early is not None:
                early.task.cancel()

    async def take(self, job_id: str, urls: tuple[str, ...]) -> list[Downloaded] | None:
        """The early download of `job_id`'s `urls`, once done; None if none was started, it was
        of other URLs, or it failed (then the caller downloads them itself)."""
        early = self._running.pop(job_id, None)
        if early is None:
            return None
        if early.urls != urls:
            early.task.cancel()
            return None
        try:
            return await early.task  # cancelling the caller cancels the download too
        except Exception as exc:  # the task downloads again, and handles the failure
            log.info("job %s: early download failed (%s); downloading again", job_id, type(exc).__name__)
            return None


async def download_outputs(ctx: WorkContext, provider: str, urls: Sequence[str]) -> list[Downloaded]:
    """Download a job's output `urls` into the blob store, in order, from `provider`'s output
    hosts only: what a download task does (service/fetcher.py), early or not."""
    adapter = ctx.adapters.get(provider)
    settings = ctx.settings
    return [
        await download_image(ctx.client, url, blobs=ctx.blobs,
                             allowed_hosts=adapter.output_hosts if adapter else (),
                             max_bytes=settings.max_output_bytes, timeout=settings.http_timeout_s)
        for url in urls
    ]


def _retrieve(task: asyncio.Task[list[Downloaded]]) -> None:
    # A failure nobody takes is not an error: the task downloads again. Retrieving it keeps
    # asyncio from logging "exception was never retrieved".
    if not task.cancelled():
        task.exception()
