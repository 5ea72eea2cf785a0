"""fal's ED25519-signed callbacks through fluxhook: a valid one is acted on; every forgery,
stale or replayed one is refused and changes nothing; a rotated JWKS is followed at once."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from service.worker import Worker
from tests.conftest import assert_error_shape

pytestmark = pytest.mark.anyio

QUEUE = "https://queue.fal.run"
JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
IMAGE = "https://v3.fal.media/files/fox/out.jpeg"
KEY = Ed25519PrivateKey.from_private_bytes(b"k" * 32)
NEW_KEY = Ed25519PrivateKey.from_private_bytes(b"n" * 32)
STRANGER = Ed25519PrivateKey.from_private_bytes(b"s" * 32)


def jwk(key: Ed25519PrivateKey) -> dict[str, str]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}


class KeyServer:
    """fal's JWKS endpoint, whose keys a test can rotate."""

    def __init__(self, *keys: Ed25519PrivateKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.outage = False

    def answer(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.outage:
            return httpx.Response(502, text="<html>bad gateway</html>")
        return httpx.Response(200, json={"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"},
                                                  *(jwk(k) for k in self.keys)]})


def signed(key: Ed25519PrivateKey, request_id: str, body: bytes, *, at_s: int,
           user: str = "user-1") -> dict[str, str]:
    message = f"{request_id}\n{user}\n{at_s}\n{hashlib.sha256(body).hexdigest()}".encode()
    return {"X-Fal-Webhook-Request-Id": request_id, "X-Fal-Webhook-User-Id": user,
            "X-Fal-Webhook-Timestamp": str(at_s), "X-Fal-Webhook-Signature": key.sign(message).hex(),
            "Content-Type": "application/json"}


def ok_body(request_id: str) -> bytes:
    return json.dumps({"request_id": request_id, "gateway_request_id": request_id, "status": "OK",
                       "payload": {"images": [{"url": IMAGE, "content_type": "image/jpeg"}],
                                   "seed": 42, "has_nsfw_concepts": [False]}}).encode()


@pytest.fixture
def make_settings(make_settings: Any) -> Any:
    env = {"FAL_KEY": "fal-key", "FAL_QUEUE_URL": QUEUE, "FAL_JWKS_URL": JWKS_URL}
    return lambda **more: make_settings(**{**env, **more})


@pytest.fixture
def keys() -> KeyServer:
    return KeyServer(KEY)


@pytest.fixture
def router(keys: KeyServer) -> respx.Router:
    router = respx.Router(assert_all_mocked=True)

    def queued(request: httpx.Request) -> httpx.Response:
        rid = f"req-{json.loads(request.content)['prompt']}"
        root = f"{QUEUE}/fal-ai/flux-pro/requests/{rid}"
        return httpx.Response(200, json={"request_id": rid, "response_url": root,
                                         "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"})

    router.post(url__startswith=f"{QUEUE}/fal-ai/flux-pro/v1.1").mock(side_effect=queued)
    router.get(JWKS_URL).mock(side_effect=keys.answer)
    router.get(IMAGE).mock(return_value=httpx.Response(200, content=b"\xff\xd8\xff fox",
                                                       headers={"content-type": "image/jpeg"}))
    router.get(url__regex=rf"{QUEUE}/.*/status", name="status").mock(return_value=httpx.Response(500))
    router.get(url__regex=rf"{QUEUE}/fal-ai/flux-pro/requests/[^/]+$", name="result").mock(
        return_value=httpx.Response(500))
    return router


@pytest.fixture
def transport(router: respx.Router) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(router.async_handler)


async def fal_job(api: Any, prompt: str) -> tuple[str, str, str]:
    """A fal job submitted (to the mocked queue): its id, callback path and fal request id."""
    response = await api.client.post("/v1/jobs", json={
        "provider": "fal", "model": "flux-pro-1.1", "input": {"prompt": prompt}})
    assert response.status_code == 202, response.text
    await Worker(api.ctx).run_once()
    job_id = response.json()["id"]
    return job_id, f"/v1/callbacks/fal/{api.ctx.tokens.issue('fal', job_id)}", f"req-{prompt}"


async def snapshot(api: Any, job_id: str) -> tuple[Any, ...]:
    """Everything a callback could change: the job row, its tasks and its events."""
    job = await api.ctx.store.jobs.get_job(job_id)
    tasks = await api.ctx.store.tasks.get_tasks(job_id)
    events = await api.ctx.store.events.list_events(after=0, job_id=job_id)
    return (job.state, job.updated_at, job.callback_count, [(t.kind, t.due_at) for t in tasks],
            [(e.seq, e.type) for e in events])


def now_s(api: Any) -> int:
    moment: int = api.ctx.clock() // 1000
    return moment


async def test_a_validly_signed_callback_completes_the_job_without_a_poll(api, router, keys):
    job_id, path, rid = await fal_job(api, "fox")
    body = ok_body(rid)
    response = await api.callback(path, content=body, headers=signed(KEY, rid, body, at_s=now_s(api)))
    assert response.status_code == 200, response.text
    await Worker(api.ctx).run_once()
    doc = (await api.client.get(f"/v1/jobs/{job_id}")).json()
    assert doc["status"] == "succeeded"
    assert doc["completion_source"] == "callback"
    assert doc["outputs"][0]["sha256"] == hashlib.sha256(b"\xff\xd8\xff fox").hexdigest()
    assert not [c for c in router.calls if c.request.url.path.endswith("/status")]
    assert keys.fetches == 1


def _drop(header: str) -> Callable[[dict[str, str]], dict[str, str]]:
    return lambda headers: {k: v for k, v in headers.items() if k != header}


def _flip_signature(headers: dict[str, str]) -> dict[str, str]:
    signature = bytearray(bytes.fromhex(headers["X-Fal-Webhook-Signature"]))
    signature[5] ^= 0x01
    return {**headers, "X-Fal-Webhook-Signature": signature.hex()}


REFUSALS: dict[str, tuple[int, str]] = {
    "wrong-signature": (401, "unknown_key"),
    "missing-request-id-header": (401, "missing_signature"),
    "missing-user-id-header": (401, "missing_signature"),
    "missing-timestamp-header": (401, "missing_signature"),
    "missing-signature-header": (401, "missing_signature"),
    "timestamp-6-minutes-old": (401, "stale_timestamp"),
    "timestamp-6-minutes-ahead": (401, "stale_timestamp"),
    "body-changed-by-one-byte": (401, "unknown_key"),
    "signed-with-a-key-not-in-the-jwks": (401, "unknown_key"),
    "signed-for-another-user-id-than-claimed": (401, "unknown_key"),
    "replay-of-another-jobs-callback": (403, "wrong_job"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_bad_callback_is_refused_and_changes_nothing(api, case):
    job_id, path, rid = await fal_job(api, "fox")
    other_id, _, other_rid = await fal_job(api, "owl")
    at = now_s(api)
    body = ok_body(rid)
    headers = signed(KEY, rid, body, at_s=at)
    if case == "wrong-signature":
        headers = _flip_signature(headers)
    elif case.startswith("missing-"):
        name = {"request-id": "Request-Id", "user-id": "User-Id", "timestamp": "Timestamp",
                "signature": "Signature"}[case.removeprefix("missing-").removesuffix("-header")]
        headers = _drop(f"X-Fal-Webhook-{name}")(headers)
    elif case == "timestamp-6-minutes-old":
        headers = signed(KEY, rid, body, at_s=at - 360)
    elif case == "timestamp-6-minutes-ahead":
        headers = signed(KEY, rid, body, at_s=at + 360)
    elif case == "body-changed-by-one-byte":
        body = body.replace(b'"seed": 42', b'"seed": 43')
    elif case == "signed-with-a-key-not-in-the-jwks":
        headers = signed(STRANGER, rid, body, at_s=at)
    elif case == "signed-for-another-user-id-than-claimed":
        headers = {**headers, "X-Fal-Webhook-User-Id": "user-2"}
    elif case == "replay-of-another-jobs-callback":
        body = ok_body(other_rid)  # fal really sent this, validly signed, about the other job
        headers = signed(KEY, other_rid, body, at_s=at)
    before = (await snapshot(api, job_id), await snapshot(api, other_id))

    response = await api.callback(path, content=body, headers=headers)

    status, code = REFUSALS[case]
    assert_error_shape(response, status, code)
    assert (await snapshot(api, job_id), await snapshot(api, other_id)) == before


async def test_a_rotated_jwks_is_followed_without_a_restart(api, keys, clock):
    _, first_path, first_rid = await fal_job(api, "fox")
    _, second_path, second_rid = await fal_job(api, "owl")
    third, third_path, third_rid = await fal_job(api, "cat")
    body = ok_body(first_rid)
    response = await api.callback(first_path, content=body,
                                     headers=signed(KEY, first_rid, body, at_s=now_s(api)))
    assert response.status_code == 200
    assert keys.fetches == 1

    keys.keys = [NEW_KEY]  # fal rotates: a new key, the old one gone
    clock.advance(60)  # well inside the 24 h the keys are kept
    body = ok_body(second_rid)
    response = await api.callback(second_path, content=body,
                                     headers=signed(NEW_KEY, second_rid, body, at_s=now_s(api)))
    assert response.status_code == 200, response.text
    assert keys.fetches == 2  # the unknown key made the keyring fetch once more

    clock.advance(60)
    before = await snapshot(api, third)
    body = ok_body(third_rid)
    response = await api.callback(third_path, content=body,
                                      headers=signed(KEY, third_rid, body, at_s=now_s(api)))
    assert_error_shape(response, 401, "unknown_key")  # the retired key no longer verifies
    assert await snapshot(api, third) == before


async def test_keys_that_cannot_be_fetched_answer_503_and_change_nothing(api, keys):
    keys.outage = True
    job_id, path, rid = await fal_job(api, "fox")
    before = await snapshot(api, job_id)
    body = ok_body(rid)
    response = await api.callback(path, content=body, headers=signed(KEY, rid, body, at_s=now_s(api)))
    assert_error_shape(response, 503, "keys_unavailable")
    assert await snapshot(api, job_id) == before


async def test_a_callback_without_its_payload_leaves_the_result_to_polling(api, router, clock):
    job_id, path, rid = await fal_job(api, "fox")
    body = json.dumps({"request_id": rid, "status": "OK", "payload": None,
                       "payload_error": "Response payload is not JSON serializable"}).encode()
    response = await api.callback(path, content=body, headers=signed(KEY, rid, body, at_s=now_s(api)))
    assert response.status_code == 200, response.text
    assert (await api.client.get(f"/v1/jobs/{job_id}")).json()["status"] != "succeeded"

    root = f"{QUEUE}/fal-ai/flux-pro/requests/{rid}"
    router["status"].mock(return_value=httpx.Response(
        200, json={"status": "COMPLETED", "request_id": rid, "response_url": root}))
    router["result"].mock(return_value=httpx.Response(200, json={"images": [{"url": IMAGE}]}))
    clock.advance(api.ctx.settings.poll_grace_s + 1)
    await Worker(api.ctx).run_once()
    await Worker(api.ctx).run_once()
    doc = (await api.client.get(f"/v1/jobs/{job_id}")).json()
    assert doc["status"] == "succeeded", doc
    assert doc["completion_source"] == "poll"
