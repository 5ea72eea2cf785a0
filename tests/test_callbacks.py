"""Inbound callbacks: verified ones act, forged ones change nothing, unsigned ones are hints."""

from __future__ import annotations

import hashlib
import hmac
import io
import json

import httpx
import pytest
import respx
from PIL import Image

from service.worker import Worker
from tests.conftest import assert_error_shape

pytestmark = pytest.mark.anyio

BASE = "https://api.bfl.ai"
IMAGE_URL = "https://delivery.eu2.bfl.ai/results/abc/sample.jpeg"


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 32), (200, 40, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def router() -> respx.Router:
    router = respx.Router(assert_all_mocked=True)
    router.post(f"{BASE}/v1/flux-pro-1.1").mock(side_effect=lambda request: httpx.Response(
        200, json={"id": f"task-{json.loads(request.content)['prompt']}",
                   "polling_url": f"{BASE}/v1/get_result?id=task-{json.loads(request.content)['prompt']}"}))
    return router


@pytest.fixture
def transport(router: respx.Router) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(router.async_handler)


async def submitted_job(api, prompt: str = "fox") -> tuple[dict, str, str]:
    """A job submitted to the (mocked) provider: its document, callback path and secret."""
    response = await api.client.post("/v1/jobs", json={
        "provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": prompt, "width": 512, "height": 512}})
    assert response.status_code == 202, response.text
    await Worker(api.ctx).run_once()
    record = await api.ctx.store.jobs.get_job(response.json()["id"])
    path = f"/v1/callbacks/bfl/{api.ctx.tokens.issue('bfl', record.id)}"
    return response.json(), path, record.webhook_secret


def ready_body(task_id: str) -> bytes:
    return json.dumps({"id": task_id, "status": "Ready", "result": {"sample": IMAGE_URL},
                       "timestamp": "2026-11-22T10:00:00Z"}).encode()


def signed(body: bytes, secret: str) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-BFL-Signature": f"sha256={digest}", "Content-Type": "application/json"}


async def snapshot(api, job_id: str) -> tuple:
    job = await api.ctx.store.jobs.get_job(job_id)
    tasks = await api.ctx.store.tasks.get_tasks(job_id)
    return job.state, job.updated_at, [(t.kind, t.due_at) for t in tasks]


async def test_signed_callback_completes_the_job_without_any_poll(api, router):
    image = router.get(IMAGE_URL).mock(return_value=httpx.Response(
        200, content=jpeg_bytes(), headers={"content-type": "image/jpeg"}))
    poll = router.get(f"{BASE}/v1/get_result")
    job, path, secret = await submitted_job(api)
    body = ready_body("task-fox")

    response = await api.callback(path, content=body, headers=signed(body, secret))

    assert response.status_code == 200
    state, _, tasks = await snapshot(api, job["id"])
    assert state.status == "running" and state.output_urls == (IMAGE_URL,)
    assert [kind for kind, _ in tasks] == ["fetch"]  # the poll task is gone
    await Worker(api.ctx).run_once()
    final = (await api.client.get(f"/v1/jobs/{job['id']}")).json()
    assert final["status"] == "succeeded"
    assert final["completion_source"] == "callback"
    assert final["outputs"][0]["sha256"] == hashlib.sha256(jpeg_bytes()).hexdigest()
    assert image.call_count == 1
    assert poll.call_count == 0


async def test_duplicate_signed_callback_is_harmless(api, router):
    router.get(IMAGE_URL).mock(return_value=httpx.Response(200, content=jpeg_bytes()))
    job, path, secret = await submitted_job(api)
    body = ready_body("task-fox")
    first = await api.callback(path, content=body, headers=signed(body, secret))
    before = await snapshot(api, job["id"])
    second = await api.callback(path, content=body, headers=signed(body, secret))
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["duplicate"] is True
    assert await snapshot(api, job["id"]) == before


def _tamper(body: bytes, secret: str) -> dict[str, str]:
    return signed(body.replace(b"Ready", b"Error"), secret)


@pytest.mark.parametrize(("case", "status", "code"), [
    ("bad-signature", 401, "bad_signature"),
    ("signed-with-another-secret", 401, "bad_signature"),
    ("malformed-signature-header", 401, "malformed_signature"),
    ("empty-signature-header", 401, "malformed_signature"),
    ("wrong-shared-secret-header", 401, "bad_signature"),
    ("garbage-token", 403, "invalid_token"),
    ("tampered-token", 403, "invalid_token"),
    ("token-for-another-provider", 403, "wrong_provider"),
    ("another-jobs-body-under-this-token", 403, "wrong_job"),
    ("oversized-body", 413, "payload_too_large"),
    ("signed-but-not-json", 400, "malformed_callback"),
])
async def test_rejected_callbacks_change_nothing(api, case, status, code):
    job, path, secret = await submitted_job(api, "fox")
    other, _, other_secret = await submitted_job(api, "owl")
    body = ready_body("task-fox")
    headers = signed(body, secret)
    if case == "bad-signature":
        headers = {"X-BFL-Signature": "sha256=" + "0" * 64}
    elif case == "signed-with-another-secret":
        headers = signed(body, other_secret)
    elif case == "malformed-signature-header":
        headers = {"X-BFL-Signature": "sha256=not-hex"}
    elif case == "empty-signature-header":
        headers = {"X-BFL-Signature": ""}
    elif case == "wrong-shared-secret-header":
        headers = {"x-webhook-secret": "guess"}
    elif case == "garbage-token":
        path = "/v1/callbacks/bfl/not-a-token"
    elif case == "tampered-token":
        path = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    elif case == "token-for-another-provider":
        path = f"/v1/callbacks/cometapi/{path.rsplit('/', 1)[1]}"
    elif case == "another-jobs-body-under-this-token":
        body = ready_body("task-owl")
        headers = signed(body, secret)
    elif case == "oversized-body":
        body = b'{"id": "task-fox", "pad": "' + b"x" * 300_000 + b'"}'
        headers = signed(body, secret)
    elif case == "signed-but-not-json":
        body = b"<xml>Ready</xml>"
        headers = signed(body, secret)
    before = (await snapshot(api, job["id"]), await snapshot(api, other["id"]))

    response = await api.callback(path, content=body, headers=headers)

    assert_error_shape(response, status, code)
    assert (await snapshot(api, job["id"]), await snapshot(api, other["id"])) == before


async def test_unsigned_callback_acts_only_after_the_confirming_poll_says_ready(api, router):
    router.get(IMAGE_URL).mock(return_value=httpx.Response(200, content=jpeg_bytes()))
    poll = router.get(f"{BASE}/v1/get_result", params={"id": "task-fox"}).mock(side_effect=[
        httpx.Response(200, json={"id": "task-fox", "status": "Pending", "progress": 0.5}),
        httpx.Response(200, json={"id": "task-fox", "status": "Ready", "result": {"sample": IMAGE_URL}}),
    ])
    job, path, _ = await submitted_job(api)
    body = ready_body("task-fox")

    response = await api.callback(path, content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 200
    state, _, tasks = await snapshot(api, job["id"])
    assert state.status == "submitted" and not state.output_urls  # a hint changes nothing yet
    assert tasks == [("poll", api.ctx.clock())]  # ...but the confirming poll is due right now
    await Worker(api.ctx).run_once()  # poll says Pending: still not done
    assert (await api.ctx.store.jobs.get_job(job["id"])).status == "running"
    api.ctx.clock.advance(60)
    await Worker(api.ctx).run_once()  # poll says Ready: fetch is scheduled
    await Worker(api.ctx).run_once()
    final = await api.ctx.store.jobs.get_job(job["id"])
    assert (final.status, final.completion_source) == ("succeeded", "poll")
    assert poll.call_count == 2


async def test_shared_secret_header_variant_is_accepted(api, router):
    router.get(IMAGE_URL).mock(return_value=httpx.Response(200, content=jpeg_bytes()))
    job, path, secret = await submitted_job(api)
    response = await api.callback(path, content=ready_body("task-fox"),
                                     headers={"x-webhook-secret": secret})
    assert response.status_code == 200
    assert (await api.ctx.store.jobs.get_job(job["id"])).output_urls == (IMAGE_URL,)


async def test_failure_callback_fails_the_job_with_the_providers_reason(api):
    job, path, secret = await submitted_job(api)
    body = json.dumps({"id": "task-fox", "status": "Error", "error": "content_policy_violation",
                       "message": "blocked"}).encode()
    await api.callback(path, content=body, headers=signed(body, secret))
    final = (await api.client.get(f"/v1/jobs/{job['id']}")).json()
    assert final["status"] == "failed"
    assert final["error"]["code"] == "provider_error"
    assert "content_policy_violation" in final["error"]["message"]
    assert await api.ctx.store.tasks.get_tasks(job["id"]) == []


async def test_late_callback_after_success_is_acknowledged_and_ignored(api, router):
    router.get(IMAGE_URL).mock(return_value=httpx.Response(200, content=jpeg_bytes()))
    job, path, secret = await submitted_job(api)
    body = ready_body("task-fox")
    await api.callback(path, content=body, headers=signed(body, secret))
    await Worker(api.ctx).run_once()
    before = await snapshot(api, job["id"])
    late = json.dumps({"id": "task-fox", "status": "Error"}).encode()
    response = await api.callback(path, content=late, headers=signed(late, secret))
    assert response.status_code == 200
    assert await snapshot(api, job["id"]) == before


async def test_a_repeated_unsigned_hint_asks_for_its_confirming_poll_only_once(api, router):
    router.get(f"{BASE}/v1/get_result", params={"id": "task-fox"}).mock(
        return_value=httpx.Response(200, json={"id": "task-fox", "status": "Pending"}))
    job, path, _ = await submitted_job(api)
    body = ready_body("task-fox")
    await api.callback(path, content=body)
    await Worker(api.ctx).run_once()  # the confirming poll: still pending, next poll later
    [after_poll] = await api.ctx.store.tasks.get_tasks(job["id"])
    assert after_poll.due_at > api.ctx.clock()
    repeat = await api.callback(path, content=body)
    assert repeat.json()["duplicate"] is True
    assert await api.ctx.store.tasks.get_tasks(job["id"]) == [after_poll]  # not pulled forward again


async def test_a_valid_token_for_a_job_the_store_does_not_have_is_refused_as_unknown_job(api):
    # The store raises a storage error (UnknownJob); service/callbacks.py makes it this 403.
    path = f"/v1/callbacks/bfl/{api.ctx.tokens.issue('bfl', 'job_gone')}"
    body = ready_body("task-fox")

    response = await api.callback(path, content=body, headers={"Content-Type": "application/json"})

    assert_error_shape(response, 403, "unknown_job")
