"""The BFL adapter: the exact submit request, every status, and every failure class (respx)."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from service.errors import ProviderRejected, ProviderRetryable
from service.providers.base import ProviderState, RawResponse, SubmitOrder
from service.providers.bfl import BflAdapter
from service.worker import Worker

pytestmark = pytest.mark.anyio

BASE = "https://api.bfl.ai"
ADAPTER = BflAdapter(BASE, "k", ("*.bfl.ai",))


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_mocked=True)


@pytest.fixture
def transport(router: respx.Router) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(router.async_handler)


def accepted(pid: str = "task-1", **extra: object) -> httpx.Response:
    return httpx.Response(200, json={"id": pid, "polling_url": f"{BASE}/v1/get_result?id={pid}",
                                     **extra})


async def test_submit_sends_key_input_and_a_per_job_webhook(ctx, make_job, router, clock):
    route = router.post(f"{BASE}/v1/flux-pro-1.1").mock(return_value=accepted())
    job = await make_job(input={"prompt": "a red fox", "width": 512, "height": 768, "seed": 3})

    assert await Worker(ctx).run_once() == 1

    request = route.calls.last.request
    assert request.headers["x-key"] == "test-bfl-key"
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert {k: body[k] for k in ("prompt", "width", "height", "seed")} == {
        "prompt": "a red fox", "width": 512, "height": 768, "seed": 3}
    prefix = "https://hooks.example.com/v1/callbacks/bfl/"
    assert body["webhook_url"].startswith(prefix)
    target = ctx.tokens.read(body["webhook_url"][len(prefix):], provider="bfl")
    assert target.job_id == job.id
    assert body["webhook_secret"] == job.webhook_secret
    assert len(job.webhook_secret) >= 32

    after = await ctx.store.jobs.get_job(job.id)
    assert after.status == "submitted"
    assert after.provider_job_id == "task-1"
    assert after.polling_url == f"{BASE}/v1/get_result?id=task-1"
    tasks = await ctx.store.tasks.get_tasks(job.id)
    assert [(t.kind, t.due_at) for t in tasks] == [("poll", clock() + 15_000)]


async def test_each_job_gets_its_own_webhook_secret_and_token(ctx, make_job, router):
    route = router.post(f"{BASE}/v1/flux-pro-1.1").mock(side_effect=[accepted("a"), accepted("b")])
    await make_job()
    await make_job()
    await Worker(ctx).run_once()
    bodies = [json.loads(call.request.content) for call in route.calls]
    assert bodies[0]["webhook_secret"] != bodies[1]["webhook_secret"]
    assert bodies[0]["webhook_url"] != bodies[1]["webhook_url"]


@pytest.mark.parametrize("status", [400, 402, 403, 422])
async def test_permanent_submit_errors_fail_the_job_with_the_providers_message(
    ctx, make_job, router, status
):
    answer = {"detail": [{"loc": ["body", "width"], "msg": "must be a multiple of 32"}]}
    if status == 402:
        answer = {"detail": "Insufficient credits"}
    router.post(f"{BASE}/v1/flux-pro-1.1").mock(return_value=httpx.Response(status, json=answer))
    job = await make_job()
    await Worker(ctx).run_once()
    after = await ctx.store.jobs.get_job(job.id)
    assert after.status == "failed"
    assert after.error_code == "submit_rejected"
    expected = "Insufficient credits" if status == 402 else "width: must be a multiple of 32"
    assert expected in after.error_message
    assert f"HTTP {status}" in after.error_message
    assert await ctx.store.tasks.get_tasks(job.id) == []


async def test_rate_limited_submit_waits_at_least_retry_after(ctx, make_job, router, clock):
    router.post(f"{BASE}/v1/flux-pro-1.1").mock(
        return_value=httpx.Response(429, headers={"Retry-After": "7"}, json={"detail": "slow down"}))
    job = await make_job()
    await Worker(ctx).run_once()
    after = await ctx.store.jobs.get_job(job.id)
    assert after.status == "queued"
    [task] = await ctx.store.tasks.get_tasks(job.id)
    assert task.kind == "submit"
    assert task.due_at >= clock() + 7_000
    assert "429" in task.last_error


async def test_transient_submit_failures_are_retried_with_the_same_secret(ctx, make_job, router, clock):
    route = router.post(f"{BASE}/v1/flux-pro-1.1").mock(side_effect=[
        httpx.ConnectError("refused"),
        httpx.Response(503, text="<html><body>502 Bad Gateway</body></html>"),
        httpx.ConnectTimeout("no connection"),  # never sent: safe to repeat at once
        accepted("task-9"),
    ])
    job = await make_job()
    worker = Worker(ctx)
    for _ in range(4):
        assert await worker.run_once() == 1
        clock.advance(120)  # past any backoff
    assert route.call_count == 4
    bodies = [json.loads(call.request.content) for call in route.calls]
    assert len({b["webhook_secret"] for b in bodies}) == 1
    assert len({b["webhook_url"] for b in bodies}) == 1
    after = await ctx.store.jobs.get_job(job.id)
    assert (after.status, after.provider_job_id) == ("submitted", "task-9")


async def test_submit_gives_up_after_the_submit_timeout(ctx, make_job, router, clock):
    router.post(f"{BASE}/v1/flux-pro-1.1").mock(return_value=httpx.Response(503))
    job = await make_job()
    worker = Worker(ctx)
    for _ in range(30):
        await worker.run_once()
        clock.advance(61)
        if (await ctx.store.jobs.get_job(job.id)).status == "failed":
            break
    after = await ctx.store.jobs.get_job(job.id)
    assert after.status == "failed"
    assert after.error_code == "provider_error"
    assert "503" in after.error_message


async def test_submit_answer_without_polling_url_polls_get_result(ctx, make_job, router, clock):
    router.post(f"{BASE}/v1/flux-pro-1.1").mock(return_value=httpx.Response(
        200, json={"id": "w1", "status": "Pending", "webhook_url": "https://x"}))
    poll = router.get(f"{BASE}/v1/get_result", params={"id": "w1"}).mock(
        return_value=httpx.Response(200, json={"id": "w1", "status": "Pending"}))
    job = await make_job()
    await Worker(ctx).run_once()
    clock.advance(16)
    await Worker(ctx).run_once()
    assert poll.call_count == 1
    assert poll.calls.last.request.headers["x-key"] == "test-bfl-key"
    assert (await ctx.store.jobs.get_job(job.id)).status == "running"


async def test_polling_url_on_a_foreign_host_is_not_sent_the_key():
    call = ADAPTER.status_call("t1", "https://evil.example.net/v1/get_result?id=t1")
    assert call.url == f"{BASE}/v1/get_result?id=t1"
    regional = ADAPTER.status_call("t1", "https://api.eu.bfl.ai/v1/get_result?id=t1")
    assert regional.url == "https://api.eu.bfl.ai/v1/get_result?id=t1"


STATUS_CASES = [
    ({"id": "t", "status": "Pending", "progress": 0.3}, ProviderState.PENDING),
    ({"id": "t", "status": "Ready", "result": {"sample": "https://delivery.eu2.bfl.ai/a.jpeg"}},
     ProviderState.READY),
    ({"id": "t", "status": "Error", "details": {"reason": "boom"}}, ProviderState.FAILED),
    ({"id": "t", "status": "Request Moderated"}, ProviderState.MODERATED),
    ({"id": "t", "status": "Content Moderated"}, ProviderState.MODERATED),
    ({"id": "t", "status": "Task not found"}, ProviderState.NOT_FOUND),
    ({"id": "t", "status": "Something New"}, ProviderState.PENDING),
    ({"id": "t", "status": "Ready", "result": {}}, ProviderState.FAILED),
]


@pytest.mark.parametrize(("body", "state"), STATUS_CASES,
                         ids=[str(c[0]["status"]) + ("-no-url" if c[0].get("result") == {} else "")
                              for c in STATUS_CASES])
def test_every_bfl_status_is_mapped(body, state):
    report = ADAPTER.parse_status(RawResponse(200, {}, json.dumps(body).encode()), now_ms=0)
    assert report.state is state
    if state is ProviderState.READY:
        assert report.output_urls == ("https://delivery.eu2.bfl.ai/a.jpeg",)


@pytest.mark.parametrize(("status", "headers", "body", "error"), [
    (429, {"retry-after": "5"}, b'{"detail":"rate"}', ProviderRetryable),
    (500, {}, b"<html>oops</html>", ProviderRetryable),
    (503, {}, b"", ProviderRetryable),
    (401, {}, b'{"detail":"bad key"}', ProviderRejected),
    (200, {}, b"not json", ProviderRejected),
])
def test_status_errors_are_classified(status, headers, body, error):
    with pytest.raises(error):
        ADAPTER.parse_status(RawResponse(status, headers, body), now_ms=0)


def test_retry_after_is_read_from_a_429():
    with pytest.raises(ProviderRetryable) as caught:
        ADAPTER.parse_submit(RawResponse(429, {"retry-after": "12"}, b"{}"), now_ms=0)
    assert caught.value.retry_after == 12


@pytest.mark.parametrize(("input_", "expected"), [
    ({"prompt": "p", "image_url": "https://x/i.png"}, {"prompt": "p", "input_image": "https://x/i.png"}),
    ({"prompt": "p", "width": 256}, {"prompt": "p", "width": 256}),
])
def test_unified_input_is_translated_to_bfl_names(input_, expected):
    call = ADAPTER.submit_call(SubmitOrder("j", "flux-kontext-pro", input_, None, None))
    assert call.url == f"{BASE}/v1/flux-kontext-pro"
    assert call.json == expected


@pytest.mark.parametrize(("body", "state", "urls"), [
    ({"id": "t", "status": "Ready", "result": {"sample": "https://d.bfl.ai/s.jpg"}}, "ready",
     ("https://d.bfl.ai/s.jpg",)),
    ({"task_id": "t", "status": "SUCCESS", "result": {"sample": "https://d.bfl.ai/s.jpg"}}, "ready",
     ("https://d.bfl.ai/s.jpg",)),
    ({"id": "t", "status": "Error", "error": "content_policy_violation", "message": "no"}, "failed", ()),
    ({"task_id": "t", "status": "FAILED"}, "failed", ()),
    ({"id": "t", "status": "Content Moderated"}, "moderated", ()),
])
def test_every_documented_callback_variant_is_understood(body, state, urls):
    report = ADAPTER.parse_callback(json.dumps(body).encode())
    assert (report.state.value, report.output_urls, report.provider_job_id) == (state, urls, "t")


async def test_a_job_that_waited_past_its_deadline_is_never_sent(ctx, make_job, router, clock):
    submit = router.post(f"{BASE}/v1/flux-pro-1.1").mock(return_value=accepted("task-1"))
    job = await make_job()
    clock.advance(901)  # its deadline: FLUXHOOK_JOB_TIMEOUT_SECONDS' default is 900

    await Worker(ctx).run_once()

    assert submit.call_count == 0
    after = await ctx.store.jobs.get_job(job.id)
    assert (after.status, after.error_code) == ("failed", "timeout")
    assert await ctx.store.tasks.get_tasks(job.id) == []
