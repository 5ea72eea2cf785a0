"""Output downloads: only expected hosts, only images, capped, retried while the URL may live."""

from __future__ import annotations

import io

import httpx
import pytest
import respx
from PIL import Image

from service.downloads import download_image
from service.errors import OutputRetryable
from service.jobs import ProviderSucceeded, Source, Submitted
from service.worker import Worker
from storage.blobs import open_blob_store
from storage.records import Schedule
from tests.blobs import read_blob, stored_names
from tests.conftest import s3_env

pytestmark = pytest.mark.anyio

GOOD = "https://delivery.eu1.bfl.ai/results/1/sample.png"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def blob_env(blob_backend: dict[str, str]) -> dict[str, str]:
    return blob_backend  # every test here runs against each blob store


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_mocked=True)


@pytest.fixture
def transport(router: respx.Router) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(router.async_handler)


async def ready_job(ctx, make_job, clock, url: str):
    job = await make_job()
    await ctx.store.jobs.record_observation(job.id, Submitted("t1"), now=clock())
    await ctx.store.jobs.record_observation(
        job.id, ProviderSucceeded(Source.CALLBACK, (url,)), now=clock(), schedule=Schedule(fetch_at=clock())
    )
    [task] = [t for t in await ctx.store.tasks.get_tasks(job.id) if t.kind == "submit"] or [None]
    if task is not None:
        await ctx.store.tasks.finish_task(task.id)
    return job


async def test_image_is_streamed_into_the_blob_store_and_the_job_succeeds(ctx, make_job, clock, router):
    router.get(GOOD).mock(
        return_value=httpx.Response(200, content=png(), headers={"content-type": "image/png"})
    )
    job = await ready_job(ctx, make_job, clock, GOOD)
    await Worker(ctx).run_once()
    after = await ctx.store.jobs.get_job(job.id)
    assert after.status == "succeeded"
    [output] = (await ctx.store.jobs.get_outputs([job.id]))[job.id]
    assert await read_blob(ctx.blobs, output.sha256) == png()
    sha = output.sha256
    assert await stored_names(ctx.blobs) == [f"{sha[:2]}/{sha[2:4]}/{sha}"]  # no partial files left behind


@pytest.mark.parametrize(
    ("url", "response", "reason"),
    [
        ("https://evil.example.com/x.png", None, "not an expected host"),
        ("http://delivery.eu1.bfl.ai/x.png", None, "must be https"),
        (
            GOOD,
            httpx.Response(200, content=b"<html>login</html>", headers={"content-type": "text/html"}),
            "not an image",
        ),
        (GOOD, httpx.Response(200, content=b"GIF8 but not really an image at all"), "not a PNG"),
        (GOOD, httpx.Response(200, content=b"\x89PNG\r\n\x1a\n" + b"0" * 60_000_000), "limit"),
        (
            GOOD,
            httpx.Response(302, headers={"location": "https://evil.example.com/x.png"}),
            "not an expected host",
        ),
    ],
)
async def test_unacceptable_outputs_fail_the_job_without_storing_anything(
    ctx, make_job, clock, router, url, response, reason
):
    if response is not None:
        router.get(url).mock(return_value=response)
    job = await ready_job(ctx, make_job, clock, url)
    await Worker(ctx).run_once()
    after = await ctx.store.jobs.get_job(job.id)
    assert after.status == "failed" and after.error_code == "output_unavailable"
    assert reason in after.error_message
    assert (await ctx.store.jobs.get_outputs([job.id]))[job.id] == []
    assert await stored_names(ctx.blobs) == []


async def test_an_expired_url_is_retried_within_the_window_then_output_unavailable(
    ctx, make_job, clock, router
):
    route = router.get(GOOD).mock(return_value=httpx.Response(404, text="expired"))
    job = await ready_job(ctx, make_job, clock, GOOD)
    worker = Worker(ctx)
    for _ in range(40):
        await worker.run_once()
        if (await ctx.store.jobs.get_job(job.id)).status == "failed":
            break
        clock.advance(60)
    after = await ctx.store.jobs.get_job(job.id)
    assert (after.status, after.error_code) == ("failed", "output_unavailable")
    assert "404" in after.error_message
    assert route.call_count >= 3  # retried, with backoff, inside the 600 s window
    assert clock() - after.ready_at <= 660_000


async def test_a_transient_failure_then_success_stores_the_image(ctx, make_job, clock, router):
    router.get(GOOD).mock(
        side_effect=[httpx.ConnectError("reset"), httpx.Response(503), httpx.Response(200, content=png())]
    )
    job = await ready_job(ctx, make_job, clock, GOOD)
    worker = Worker(ctx)
    for _ in range(3):
        await worker.run_once()
        clock.advance(70)
    assert (await ctx.store.jobs.get_job(job.id)).status == "succeeded"


async def test_a_blob_store_that_fails_makes_the_download_retryable_not_rejected(router, s3_endpoint):
    router.get(GOOD).mock(return_value=httpx.Response(200, content=png()))
    env = s3_env(s3_endpoint, "no-such-bucket-here")
    failing = open_blob_store(env["FLUXHOOK_BLOB_URL"], aws=env)
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as client:
        with pytest.raises(OutputRetryable, match="object storage failed"):
            await download_image(client, GOOD, blobs=failing, allowed_hosts=("*.bfl.ai",),
                                 max_bytes=1 << 20, timeout=5)
