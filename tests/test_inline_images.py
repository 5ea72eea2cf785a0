"""Images BFL takes only as base64 are fetched by the submitter, bounded, egress-checked, and
inlined; a fetch that fails is a classified job error, never a crash (service/inline_images.py)."""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import respx
from PIL import Image

from service.context import WorkContext
from service.resources import open_context
from service.settings import Settings
from service.uploads import store_upload, upload_document
from service.worker import Worker
from storage.records import NewJob
from tests.test_bfl_schema import problems

pytestmark = pytest.mark.anyio

BFL = "https://api.bfl.ai"
IMAGE_HOST = "https://images.example.com"
LIMIT = 4096


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_mocked=True)


@pytest.fixture
def transport(router: respx.Router) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(router.async_handler)


@pytest.fixture
async def ctx(
    make_settings: Callable[..., Settings], clock: object, transport: httpx.AsyncBaseTransport
) -> AsyncIterator[WorkContext]:
    """Image hosts answer through respx too: the fetch uses the SSRF-guarded client, whose
    transport is replaced here (the guard itself is exercised in `guarded_ctx`)."""
    async with open_context(make_settings(FLUXHOOK_UPLOAD_MAX_BYTES=str(LIMIT)), transport=transport,
                            notify_transport=transport, clock=clock,  # type: ignore[arg-type]
                            rand=random.Random(7)) as context:
        yield context


def accepted() -> httpx.Response:
    return httpx.Response(200, json={"id": "task-1", "polling_url": f"{BFL}/v1/get_result?id=task-1"})


def png(colour: tuple[int, int, int] = (10, 200, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(out, "PNG")
    return out.getvalue()


async def upload_url(ctx: WorkContext, data: bytes) -> str:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    record = await store_upload(ctx, chunks(), "image/png")
    return str(upload_document(ctx, record)["url"])


async def test_image_prompt_url_is_sent_to_bfl_as_base64(ctx, make_job, router):
    picture = png()
    fetched = router.get(f"{IMAGE_HOST}/ref.png").mock(
        return_value=httpx.Response(200, content=picture, headers={"Content-Type": "image/png"}))
    submit = router.post(f"{BFL}/v1/flux-pro-1.1").mock(return_value=accepted())
    job = await make_job(input={"prompt": "a fox", "image_prompt": f"{IMAGE_HOST}/ref.png"})

    await Worker(ctx).run_once()

    assert fetched.call_count == 1
    body = json.loads(submit.calls.last.request.content)
    assert base64.b64decode(body["image_prompt"]) == picture
    assert problems("/v1/flux-pro-1.1", body) == []
    after = await ctx.store.jobs.get_job(job.id)
    assert after.status == "submitted"
    assert after.input["image_prompt"] == f"{IMAGE_HOST}/ref.png"  # the job keeps the URL


async def test_fill_image_and_mask_from_uploads_are_read_from_the_blob_store(ctx, make_job, router):
    picture, mask = png((200, 10, 10)), png((255, 255, 255))
    submit = router.post(f"{BFL}/v1/flux-pro-1.0-fill").mock(return_value=accepted())
    image_url, mask_url = await upload_url(ctx, picture), await upload_url(ctx, mask)
    await make_job(model="flux-pro-1.0-fill",
                   input={"prompt": "a red door", "image_url": image_url, "mask_url": mask_url})

    await Worker(ctx).run_once()

    body = json.loads(submit.calls.last.request.content)
    assert (base64.b64decode(body["image"]), base64.b64decode(body["mask"])) == (picture, mask)
    assert problems("/v1/flux-pro-1.0-fill", body) == []
    assert len(router.calls) == 1  # the submit only: no HTTP request to fluxhook's own uploads


async def test_kontext_input_image_is_sent_as_the_url(ctx, make_job, router):
    submit = router.post(f"{BFL}/v1/flux-kontext-pro").mock(return_value=accepted())
    await make_job(model="flux-kontext-pro", input={"prompt": "snow", "image_url": f"{IMAGE_HOST}/a.png",
                                                    "image_url_2": f"{IMAGE_HOST}/b.png"})
    await Worker(ctx).run_once()
    body = json.loads(submit.calls.last.request.content)
    assert (body["input_image"], body["input_image_2"]) == (f"{IMAGE_HOST}/a.png", f"{IMAGE_HOST}/b.png")
    assert len(router.calls) == 1  # nothing fetched


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1000):
        yield data[start:start + 1000]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
async def test_an_image_over_the_upload_limit_fails_the_job_without_calling_bfl(
    ctx, make_job, router, declared
):
    big = png() + b"\0" * (LIMIT + 1)
    answer = (httpx.Response(200, content=big) if declared
              else httpx.Response(200, content=_chunks(big)))
    router.get(f"{IMAGE_HOST}/big.png").mock(return_value=answer)
    submit = router.post(f"{BFL}/v1/flux-pro-1.1").mock(return_value=accepted())
    job = await make_job(input={"prompt": "a fox", "image_prompt": f"{IMAGE_HOST}/big.png"})

    await Worker(ctx).run_once()

    assert submit.call_count == 0
    after = await ctx.store.jobs.get_job(job.id)
    assert (after.status, after.error_code) == ("failed", "input_unavailable")
    assert after.error_message == f"input.image_prompt: the image is larger than {LIMIT} bytes"
    assert await ctx.store.tasks.get_tasks(job.id) == []


@pytest.mark.parametrize(("answer", "reason"), [
    (httpx.Response(404), "image host images.example.com answered HTTP 404"),
    (httpx.Response(200, content=b"<html>not a picture</html>"),
     "the URL did not give a PNG, JPEG, WebP or GIF image"),
])
async def test_a_missing_or_non_image_url_fails_the_job_at_once(ctx, make_job, router, answer, reason):
    router.get(f"{IMAGE_HOST}/x.png").mock(return_value=answer)
    submit = router.post(f"{BFL}/v1/flux-dev").mock(return_value=accepted())
    job = await make_job(model="flux-dev", input={"prompt": "p", "image_prompt": f"{IMAGE_HOST}/x.png"})
    await Worker(ctx).run_once()
    after = await ctx.store.jobs.get_job(job.id)
    assert (after.status, after.error_code, after.error_message) == (
        "failed", "input_unavailable", f"input.image_prompt: {reason}")
    assert submit.call_count == 0


@pytest.mark.parametrize(("error", "words"), [
    (httpx.ConnectError("connection refused"), "unreachable (ConnectError)"),
    (httpx.ReadTimeout("slow"), "timed out"),
])
async def test_an_unreachable_image_is_retried_then_fails_the_job_with_a_clear_error(
    ctx, make_job, router, clock, error, words
):
    fetch = router.get(f"{IMAGE_HOST}/ref.png").mock(side_effect=error)
    submit = router.post(f"{BFL}/v1/flux-pro-1.1-ultra").mock(return_value=accepted())
    job = await make_job(model="flux-pro-1.1-ultra",
                         input={"prompt": "p", "image_prompt": f"{IMAGE_HOST}/ref.png"})
    worker = Worker(ctx)

    await worker.run_once()
    still = await ctx.store.jobs.get_job(job.id)
    [task] = await ctx.store.tasks.get_tasks(job.id)
    assert still.status == "queued"  # tried again later: the host may come back
    assert task.last_error == f"input.image_prompt: image host images.example.com {words}"

    for _ in range(40):
        clock.advance(61)
        await worker.run_once()
        if (await ctx.store.jobs.get_job(job.id)).status == "failed":
            break
    after = await ctx.store.jobs.get_job(job.id)
    assert (after.status, after.error_code) == ("failed", "input_unavailable")
    assert after.error_message == f"input.image_prompt: image host images.example.com {words}"
    assert fetch.call_count > 1 and submit.call_count == 0


async def test_a_host_that_comes_back_is_fetched_on_the_retry(ctx, make_job, router, clock):
    picture = png()
    router.get(f"{IMAGE_HOST}/ref.png").mock(
        side_effect=[httpx.ConnectError("down"), httpx.Response(200, content=picture)])
    submit = router.post(f"{BFL}/v1/flux-pro-1.1").mock(return_value=accepted())
    job = await make_job(input={"prompt": "p", "image_prompt": f"{IMAGE_HOST}/ref.png"})
    worker = Worker(ctx)
    await worker.run_once()
    clock.advance(61)
    await worker.run_once()
    assert base64.b64decode(json.loads(submit.calls.last.request.content)["image_prompt"]) == picture
    assert (await ctx.store.jobs.get_job(job.id)).status == "submitted"


async def test_every_redirect_hop_is_checked_by_the_egress_rules(ctx, make_job, router):
    router.get(f"{IMAGE_HOST}/moved.png").mock(
        return_value=httpx.Response(302, headers={"Location": "http://127.0.0.1:8080/admin.png"}))
    submit = router.post(f"{BFL}/v1/flux-pro-1.1").mock(return_value=accepted())
    job = await make_job(input={"prompt": "p", "image_prompt": f"{IMAGE_HOST}/moved.png"})
    await Worker(ctx).run_once()
    after = await ctx.store.jobs.get_job(job.id)
    assert (after.error_code, after.error_message) == (
        "input_unavailable", "input.image_prompt: image host refused: loopback")
    assert submit.call_count == 0


async def test_a_mangled_upload_url_fails_the_job(ctx, make_job, router):
    submit = router.post(f"{BFL}/v1/flux-pro-1.0-expand").mock(return_value=accepted())
    job = await make_job(model="flux-pro-1.0-expand",
                         input={"image_url": "https://hooks.example.com/uploads/up_forged", "top": 64})
    await Worker(ctx).run_once()
    after = await ctx.store.jobs.get_job(job.id)
    assert (after.status, after.error_code) == ("failed", "input_unavailable")
    assert after.error_message == "input.image_url: upload URL refused: no such upload"
    assert submit.call_count == 0


# The real SSRF guard: the default context's notify client (service/egress.py).

@pytest.fixture
async def guarded_ctx(make_settings: Callable[..., Settings], clock: object,
                      transport: httpx.AsyncBaseTransport) -> AsyncIterator[WorkContext]:
    async with open_context(make_settings(), transport=transport, clock=clock,  # type: ignore[arg-type]
                            rand=random.Random(7)) as context:
        yield context


@pytest.mark.parametrize(("url", "reason"), [
    ("http://127.0.0.1:9/x.png", "loopback"),  # refused before any connection
    ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
    ("http://localhost:9/x.png", "loopback"),  # a name: refused by the guard when connecting
])
async def test_egress_rules_refuse_private_image_urls(guarded_ctx, router, url, reason):
    ctx = guarded_ctx
    submit = router.post(f"{BFL}/v1/flux-pro-1.1").mock(return_value=accepted())
    now = ctx.clock()
    job, _ = await ctx.store.jobs.create_job(NewJob(
        id="job_egress", provider="bfl", model="flux-pro-1.1",
        input={"prompt": "p", "image_prompt": url}, metadata={}, webhook_secret="s" * 32,
        idempotency_key=None, request_hash=None, deadline_at=now + 900_000), now=now)

    await Worker(ctx).run_once()

    after = await ctx.store.jobs.get_job(job.id)
    assert (after.status, after.error_code) == ("failed", "input_unavailable")
    assert after.error_message.startswith("input.image_prompt: image host refused: ")
    assert reason in after.error_message
    assert submit.call_count == 0
