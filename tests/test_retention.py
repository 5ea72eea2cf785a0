"""Data lifecycle: DELETE /v1/jobs/{id}, and pruning by age that removes what is old, keeps what
is not, and never removes an image a kept job or a live upload still references."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from service.app import open_context
from service.context import WorkContext
from service.ids import new_job_id
from service.jobs import OutputsStored, ProviderSucceeded, Source, Submitted
from service.retention import delete_job, prune
from service.settings import Settings
from storage.records import AttemptResult, JobRecord, Judgement, NewJob, Schedule, StoredOutput, UploadRecord
from tests.blobs import age_blobs
from tests.conftest import FakeClock, assert_error_shape

pytestmark = pytest.mark.anyio

DAY = 86_400
RETENTION = {
    "FLUXHOOK_RETAIN_EVENTS_SECONDS": str(30 * DAY),
    "FLUXHOOK_RETAIN_CALLBACKS_SECONDS": str(30 * DAY),
    "FLUXHOOK_RETAIN_DELIVERY_ATTEMPTS_SECONDS": str(30 * DAY),
    "FLUXHOOK_RETAIN_IMAGES_SECONDS": str(7 * DAY),
}


@pytest.fixture
def blob_env(blob_backend: dict[str, str]) -> dict[str, str]:
    return blob_backend  # every test here runs against each blob store


@pytest.fixture
async def life(make_settings: Callable[..., Settings], clock: FakeClock) -> AsyncIterator[WorkContext]:
    async with open_context(make_settings(**RETENTION), clock=clock) as ctx:
        yield ctx


async def new_job(ctx: WorkContext, **fields: Any) -> JobRecord:
    now = ctx.clock()
    new = NewJob(id=new_job_id(now), provider="bfl", model="flux-pro-1.1",
                 input={"prompt": "a red fox", "width": 512, "height": 512}, metadata={},
                 webhook_secret=None, idempotency_key=None, request_hash=None,
                 deadline_at=now + 900_000, **fields)
    job, _ = await ctx.store.jobs.create_job(new, now=now)
    return job


async def store_blob(ctx: WorkContext, image: bytes) -> str:
    async with ctx.blobs.writer(max_bytes=1 << 20) as writer:
        await writer.write(image)
        sha256 = await writer.commit()
    settle(ctx)
    return sha256


def settle(ctx: WorkContext) -> None:
    """Run the blob store's clock an hour ahead: every image looks written long ago (past the
    settling time new ones get)."""
    age_blobs(ctx.blobs, 3600)


async def succeeded_job(ctx: WorkContext, *images: bytes, **fields: Any) -> JobRecord:
    """A job that went all the way to succeeded with `images` stored, now (by the test clock)."""
    job = await new_job(ctx, **fields)
    now = ctx.clock()
    await ctx.store.jobs.record_observation(job.id, Submitted(f"p-{job.id}"), now=now)
    urls = tuple(f"https://x.bfl.ai/{job.id}/{i}" for i in range(len(images)))
    await ctx.store.jobs.record_observation(job.id, ProviderSucceeded(Source.CALLBACK, urls), now=now,
                                       schedule=Schedule(fetch_at=now))
    [fetch] = [t for t in await ctx.store.tasks.get_tasks(job.id) if t.kind == "fetch"]
    stored = [StoredOutput(i, await store_blob(ctx, image), "image/png", len(image), urls[i])
              for i, image in enumerate(images)]
    recorded = await ctx.store.jobs.record_outputs(job.id, stored, now=now, task_id=fetch.id,
                                              observation=OutputsStored(len(images)))
    assert recorded is not None and recorded.job.status == "succeeded"
    return recorded.job


async def deliver(ctx: WorkContext, job: JobRecord) -> None:
    """Send every due delivery once (the receiver says 204), as the notifier would."""
    for delivery in await ctx.store.deliveries.claim_due_deliveries(
            now=ctx.clock(), limit=100, lease_ms=60_000, busy={}, per_destination=100):
        result = AttemptResult(True, ctx.clock(), 5, 204, "", None, None)
        await ctx.store.deliveries.record_delivery_attempt(delivery, result, now=ctx.clock(),
                                                           disable_after_ms=1)


async def callback(ctx: WorkContext, job: JobRecord, body: bytes) -> None:
    await ctx.store.jobs.record_callback(job.id, provider="bfl", body=body, now=ctx.clock(),
                                         judge=lambda _job, _attempts: Judgement("unsigned", None))


async def count(ctx: WorkContext, table: str, job_id: str) -> int:
    """Rows of `table` about `job_id`, read through the database's own query (either backend)."""
    column = "delivery_id IN (SELECT id FROM deliveries WHERE job_id = ?)" if table == "delivery_attempts" \
        else "job_id = ?"
    sql = f"SELECT COUNT(*) FROM {table} WHERE {column}"  # noqa: S608
    store: Any = ctx.store
    return int(await store.query(lambda conn: conn.execute(sql, (job_id,)).fetchone()[0]))


def image(n: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + bytes([n]) * 64


# Pruning by age -------------------------------------------------------------------------------------


async def test_pruning_removes_old_events_callbacks_and_attempts_and_keeps_recent_ones(
    life: WorkContext, clock: FakeClock
):
    old = await succeeded_job(life, image(1), webhook_url="https://receiver.example.com/hook")
    await callback(life, old, b'{"status": "Ready"}')
    await deliver(life, old)
    clock.advance(31 * DAY)
    new = await succeeded_job(life, image(2), webhook_url="https://receiver.example.com/hook")
    await callback(life, new, b'{"status": "Ready"}')
    await deliver(life, new)
    before = {t: (await count(life, t, old.id), await count(life, t, new.id))
              for t in ("events", "deliveries", "delivery_attempts", "callbacks")}
    assert all(o > 0 and n > 0 for o, n in before.values()), before

    pruned = await prune(life)

    after = {t: (await count(life, t, old.id), await count(life, t, new.id)) for t in before}
    assert after == {t: (0, n) for t, (_, n) in before.items()}
    assert pruned.events == before["events"][0]
    assert pruned.callbacks == 1
    # The jobs themselves stay, history counters included.
    kept = await life.store.jobs.get_job(old.id)
    assert kept is not None and kept.callback_count == 1 and kept.event_count == before["events"][0]


async def test_an_old_event_with_a_delivery_still_pending_is_kept(life: WorkContext, clock: FakeClock):
    job = await succeeded_job(life, image(1), webhook_url="https://receiver.example.com/hook")
    events = await count(life, "events", job.id)
    clock.advance(40 * DAY)

    assert (await prune(life)).events == 0
    assert await count(life, "events", job.id) == events
    assert await count(life, "deliveries", job.id) == events

    await deliver(life, job)  # once delivered, the next prune takes them
    await succeeded_job(life, image(2))  # (a later event: the log's newest is always kept)
    await prune(life)
    assert await count(life, "events", job.id) == 0


async def test_pruning_keeps_the_newest_event_so_no_event_id_is_used_again(
    life: WorkContext, clock: FakeClock
):
    job = await succeeded_job(life, image(1))
    newest = await life.store.events.latest_event_seq()
    clock.advance(40 * DAY)
    await prune(life)
    assert await count(life, "events", job.id) == 1
    await succeeded_job(life, image(2))
    assert await life.store.events.latest_event_seq() > newest


async def test_old_images_go_but_one_a_recent_job_shares_is_kept(life: WorkContext, clock: FakeClock):
    old = await succeeded_job(life, image(1), image(2))
    clock.advance(8 * DAY)
    recent = await succeeded_job(life, image(1))
    shared, only_old = (o.sha256 for o in (await life.store.jobs.get_outputs([old.id]))[old.id])

    pruned = await prune(life)

    assert pruned.jobs_images == 1 and pruned.blobs == 1
    assert (await life.store.jobs.get_job(old.id)).outputs_deleted_at == clock()
    assert (await life.store.jobs.get_job(recent.id)).outputs_deleted_at is None
    assert not await life.blobs.exists(only_old)
    assert await life.blobs.exists(shared)

    clock.advance(8 * DAY)  # now the recent job is old too: the shared image has no keeper left
    assert (await prune(life)).blobs == 1
    assert not await life.blobs.exists(shared)


async def test_an_image_a_live_upload_shares_is_kept_until_the_upload_expires(
    life: WorkContext, clock: FakeClock
):
    job = await succeeded_job(life, image(3))
    [output] = (await life.store.jobs.get_outputs([job.id]))[job.id]
    clock.advance(8 * DAY)
    await life.store.uploads.record_upload(UploadRecord("upl_1", output.sha256, "image/png", 72, clock(),
                                                clock() + DAY * 1000))
    await prune(life)
    assert await life.blobs.exists(output.sha256)

    clock.advance(1001 * DAY)
    await prune(life)
    assert not await life.blobs.exists(output.sha256)


async def test_an_old_job_still_running_keeps_its_image(life: WorkContext, clock: FakeClock):
    """Ready at the provider, its image stored but the job not yet final: a live reference."""
    old = await succeeded_job(life, image(4))
    [output] = (await life.store.jobs.get_outputs([old.id]))[old.id]
    running = await new_job(life)
    await life.store.jobs.record_observation(running.id, Submitted("p-1"), now=clock())
    clock.advance(100 * DAY)
    await life.store.jobs.record_outputs(running.id, [StoredOutput(0, output.sha256, "image/png", 72, None)],
                                    now=clock(), task_id=0, observation=OutputsStored(1))
    assert (await life.store.jobs.get_job(running.id)).status == "submitted"  # not final

    assert (await prune(life)).jobs_images == 1  # the old job's, not the running one's
    assert (await life.store.jobs.get_job(running.id)).outputs_deleted_at is None
    assert await life.blobs.exists(output.sha256)


async def test_pruning_a_backlog_runs_in_small_batches(life: WorkContext, clock: FakeClock):
    job = await new_job(life)
    for n in range(25):
        await callback(life, job, f'{{"n": {n}}}'.encode())
    clock.advance(31 * DAY)

    assert await life.store.retention.prune_callbacks(before=clock(), limit=10) == 10  # one batch is 10
    assert (await prune(life, batch=10)).callbacks == 15  # the rest: two more batches
    assert await count(life, "callbacks", job.id) == 0


async def test_answered_polls_are_pruned_with_the_callbacks_in_batches(life: WorkContext, clock: FakeClock):
    job = await new_job(life)
    await life.store.jobs.record_observation(job.id, Submitted("p-1"), now=clock())
    for _ in range(12):
        await life.store.jobs.record_observation(job.id, Submitted("p-1"), now=clock(), counted_poll=True)
        clock.advance(1)
    clock.advance(30 * DAY - 6.5)  # the first six polls are past the callbacks' 30 days
    assert len(await life.store.jobs.get_polls(job.id)) == 12

    assert (await prune(life, batch=4)).polls == 6
    kept = await life.store.jobs.get_polls(job.id)
    assert len(kept) == 6
    assert min(poll.at for poll in kept) >= clock() - 30 * DAY * 1000


async def test_settings_of_zero_keep_everything(
    make_settings: Callable[..., Settings], clock: FakeClock
):
    keep = {name: "0" for name in RETENTION}
    async with open_context(make_settings(**keep), clock=clock) as ctx:
        job = await succeeded_job(ctx, image(1), webhook_url="https://receiver.example.com/hook")
        await deliver(ctx, job)
        await callback(ctx, job, b"{}")
        clock.advance(10_000 * DAY)
        pruned = await prune(ctx)
        assert (pruned.events, pruned.callbacks, pruned.delivery_attempts, pruned.jobs_images) == (0, 0, 0, 0)
        assert await count(ctx, "callbacks", job.id) == 1


async def test_a_file_written_moments_ago_is_left_for_a_later_prune(life: WorkContext, clock: FakeClock):
    """A download of the same bytes may have just renamed its file into place, its reference
    not yet committed: a fresh file is not removed, and the next prune finishes the job."""
    job = await succeeded_job(life, image(5))
    [output] = (await life.store.jobs.get_outputs([job.id]))[job.id]
    age_blobs(life.blobs, 0)
    async with life.blobs.writer(max_bytes=1 << 20) as writer:  # the same bytes, just now
        await writer.write(image(5))
        assert await writer.commit() == output.sha256
    await delete_job(life, job.id)
    assert await life.blobs.exists(output.sha256)

    settle(life)
    assert (await prune(life)).blobs == 1
    assert not await life.blobs.exists(output.sha256)


async def test_a_crash_after_removing_the_reference_leaves_only_a_file_the_next_prune_removes(
    life: WorkContext, clock: FakeClock
):
    job = await succeeded_job(life, image(6))
    [output] = (await life.store.jobs.get_outputs([job.id]))[job.id]
    await life.store.retention.remove_job_outputs(job.id, now=clock())  # committed; the process dies here
    assert await life.blobs.exists(output.sha256)

    assert (await prune(life)).blobs == 1
    assert not await life.blobs.exists(output.sha256)


# DELETE /v1/jobs/{id} ------------------------------------------------------------------------------


async def test_delete_removes_a_finished_jobs_images_and_keeps_its_history(api, clock: FakeClock):
    ctx = api.ctx
    job = await succeeded_job(ctx, image(1), image(2), webhook_url="https://receiver.example.com/hook")
    other = await succeeded_job(ctx, image(1))
    before = (await api.client.get(f"/v1/jobs/{job.id}")).json()
    shared, own = (o["sha256"] for o in before["outputs"])
    events = await count(ctx, "events", job.id)

    response = await api.client.delete(f"/v1/jobs/{job.id}")

    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["status"] == "succeeded" and doc["outputs_deleted_at"] is not None
    assert doc["outputs"] == before["outputs"]  # what there was, for the record
    assert doc["attempts"] == before["attempts"]
    assert await count(ctx, "events", job.id) == events
    assert not await ctx.blobs.exists(own)
    assert await ctx.blobs.exists(shared)  # the other job still serves it
    assert_error_shape(await api.client.get(f"/v1/jobs/{job.id}/outputs/0"), 410, "output_deleted")
    assert (await api.client.get(f"/v1/jobs/{other.id}/outputs/0")).status_code == 200

    again = await api.client.delete(f"/v1/jobs/{job.id}")
    assert again.status_code == 200 and again.json()["outputs_deleted_at"] == doc["outputs_deleted_at"]


async def test_delete_refuses_a_job_not_yet_final_and_an_unknown_one(api):
    job = await new_job(api.ctx)
    response = await api.client.delete(f"/v1/jobs/{job.id}")
    error = assert_error_shape(response, 409, "job_not_final")
    assert error["details"] == [{"field": "status", "rule": "terminal", "current": "queued"}]
    assert "cancel" in error["message"]
    assert (await api.client.get(f"/v1/jobs/{job.id}")).json()["outputs_deleted_at"] is None

    assert_error_shape(await api.client.delete("/v1/jobs/job_nope"), 404, "not_found")


async def test_a_cancelled_job_can_be_deleted(api):
    job = await new_job(api.ctx)
    assert (await api.client.post(f"/v1/jobs/{job.id}/cancel")).status_code == 200
    response = await api.client.delete(f"/v1/jobs/{job.id}")
    assert response.status_code == 200 and response.json()["outputs_deleted_at"] is not None

