"""Replicate's signed callbacks through fluxhook's intake: a valid one is acted on; a wrong or
missing signature, a stale or future timestamp, a changed body and a replay for another job are
refused with no state change; a rotated secret is followed without a restart."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx
from PIL import Image

from service.resources import build_adapters
from service.settings import Settings
from service.simulator.callbacks import standard_webhook_signature
from service.worker import Worker
from tests.conftest import assert_error_shape

pytestmark = pytest.mark.anyio

BASE = "https://api.replicate.com"
MODEL = "black-forest-labs/flux-1.1-pro"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ROTATED = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
IMAGE_URL = "https://replicate.delivery/xezq/abc/out-0.webp"


class SecretServer:
    """GET /v1/webhooks/default/secret: the account's current secret, counting fetches."""

    def __init__(self) -> None:
        self.secret = SECRET
        self.fetches = 0

    def answer(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        return httpx.Response(200, json={"key": self.secret})


@pytest.fixture
def secrets() -> SecretServer:
    return SecretServer()


@pytest.fixture
def make_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**env: str) -> Settings:
        return make_settings(REPLICATE_API_TOKEN="r8_test", REPLICATE_BASE_URL=BASE, **env)

    return make


@pytest.fixture
def router(secrets: SecretServer) -> respx.Router:
    router = respx.Router(assert_all_mocked=True)

    def created(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["input"]["prompt"]
        return httpx.Response(201, json=prediction(f"p-{prompt}", "starting"))

    router.post(f"{BASE}/v1/models/{MODEL}/predictions").mock(side_effect=created)
    router.get(f"{BASE}/v1/webhooks/default/secret").mock(side_effect=secrets.answer)
    return router


@pytest.fixture
def transport(router: respx.Router) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(router.async_handler)


def prediction(pid: str, status: str, **fields: Any) -> dict[str, Any]:
    root = f"{BASE}/v1/predictions/{pid}"
    return {"id": pid, "model": MODEL, "status": status, "output": None, "error": None,
            "logs": "", "urls": {"get": root, "cancel": f"{root}/cancel"}, **fields}


def succeeded(pid: str) -> bytes:
    return json.dumps(prediction(pid, "succeeded", output=IMAGE_URL), separators=(",", ":")).encode()


def signed(body: bytes, *, at_s: int, secret: str = SECRET, msg_id: str = "msg_1") -> dict[str, str]:
    return {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(at_s),
            "webhook-signature": standard_webhook_signature(secret, msg_id, at_s, body)}


def webp_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 32), (20, 140, 60)).save(buffer, "WEBP")
    return buffer.getvalue()


async def submitted(api, prompt: str) -> tuple[str, str]:
    """A Replicate job submitted to the mocked API: its id and its callback path."""
    response = await api.client.post("/v1/jobs", json={
        "provider": "replicate", "model": MODEL, "input": {"prompt": prompt}})
    assert response.status_code == 202, response.text
    await Worker(api.ctx).run_once()
    job = await api.ctx.store.jobs.get_job(response.json()["id"])
    assert job.provider_job_id == f"p-{prompt}"
    return job.id, f"/v1/callbacks/replicate/{api.ctx.tokens.issue('replicate', job.id)}"


async def snapshot(api, job_id: str) -> tuple:
    """Everything a callback could change: the job document, its events, its pending work."""
    document = (await api.client.get(f"/v1/jobs/{job_id}")).json()
    events = await api.ctx.store.events.list_events(after=0, job_id=job_id)
    tasks = await api.ctx.store.tasks.get_tasks(job_id)
    return document, [(e.seq, e.type) for e in events], [(t.kind, t.due_at) for t in tasks]


async def test_a_signed_callback_completes_the_job_and_its_download_is_due_at_once(
        api, router, clock, secrets):
    image = router.get(IMAGE_URL).mock(return_value=httpx.Response(
        200, content=webp_bytes(), headers={"content-type": "image/webp"}))
    polls = router.get(f"{BASE}/v1/predictions/p-fox")
    job_id, path = await submitted(api, "fox")
    body = succeeded("p-fox")

    response = await api.client.post(path, content=body, headers=signed(body, at_s=clock() // 1000))

    assert response.status_code == 200, response.text
    # Replicate removes outputs after an hour: the download is due now, not after a grace.
    fetches = [t for t in await api.ctx.store.tasks.get_tasks(job_id) if t.kind == "fetch"]
    assert [t.due_at for t in fetches] == [clock()]
    await Worker(api.ctx).run_once()
    doc = (await api.client.get(f"/v1/jobs/{job_id}")).json()
    assert (doc["status"], doc["completion_source"]) == ("succeeded", "callback")
    assert image.call_count == 1 and polls.call_count == 0
    assert secrets.fetches == 1


def tamper_wrong_secret(body: bytes, now_s: int) -> tuple[bytes, dict[str, str]]:
    return body, signed(body, at_s=now_s, secret=ROTATED)


def tamper_no_signature(body: bytes, now_s: int) -> tuple[bytes, dict[str, str]]:
    headers = signed(body, at_s=now_s)
    del headers["webhook-signature"]
    return body, headers


def tamper_unsigned(body: bytes, now_s: int) -> tuple[bytes, dict[str, str]]:
    return body, {"content-type": "application/json"}


def tamper_six_minutes_old(body: bytes, now_s: int) -> tuple[bytes, dict[str, str]]:
    return body, signed(body, at_s=now_s - 360)


def tamper_six_minutes_ahead(body: bytes, now_s: int) -> tuple[bytes, dict[str, str]]:
    return body, signed(body, at_s=now_s + 360)


def tamper_one_byte(body: bytes, now_s: int) -> tuple[bytes, dict[str, str]]:
    headers = signed(body, at_s=now_s)
    return body.replace(b"succeeded", b"succeedee"), headers


@pytest.mark.parametrize("tamper", [
    tamper_wrong_secret, tamper_no_signature, tamper_unsigned, tamper_six_minutes_old,
    tamper_six_minutes_ahead, tamper_one_byte,
], ids=lambda f: f.__name__.removeprefix("tamper_"))
async def test_a_callback_without_a_fresh_valid_signature_is_a_401_that_changes_nothing(api, clock, tamper):
    job_id, path = await submitted(api, "fox")
    before = await snapshot(api, job_id)
    body, headers = tamper(succeeded("p-fox"), clock() // 1000)

    response = await api.client.post(path, content=body, headers=headers)

    assert_error_shape(response, 401)
    assert await snapshot(api, job_id) == before
    assert before[0]["status"] != "succeeded"


async def test_a_valid_callback_replayed_for_another_job_is_refused_and_changes_nothing(api, clock):
    victim_id, victim_path = await submitted(api, "fox")
    await submitted(api, "owl")
    before = await snapshot(api, victim_id)
    # The owl job's genuine, validly signed callback, sent to the fox job's callback URL.
    body = succeeded("p-owl")

    response = await api.client.post(victim_path, content=body, headers=signed(body, at_s=clock() // 1000))

    assert_error_shape(response, 403, "wrong_job")
    assert await snapshot(api, victim_id) == before


async def test_a_rotated_secret_is_followed_without_a_restart(api, router, clock, secrets):
    router.get(IMAGE_URL).mock(return_value=httpx.Response(
        200, content=webp_bytes(), headers={"content-type": "image/webp"}))
    fox_id, fox_path = await submitted(api, "fox")
    owl_id, owl_path = await submitted(api, "owl")
    start = json.dumps(prediction("p-fox", "processing"), separators=(",", ":")).encode()
    first = await api.client.post(fox_path, content=start, headers=signed(start, at_s=clock() // 1000))
    assert first.status_code == 200 and secrets.fetches == 1

    secrets.secret = ROTATED  # the account rotates: new secret, old one gone
    clock.advance(60)
    body = succeeded("p-owl")
    rotated = await api.client.post(owl_path, content=body,
                                    headers=signed(body, at_s=clock() // 1000, secret=ROTATED))

    assert rotated.status_code == 200, rotated.text
    assert secrets.fetches == 2  # fetched once more, on the unknown signature
    clock.advance(60)
    old = succeeded("p-fox")
    stale_key = await api.client.post(fox_path, content=old, headers=signed(old, at_s=clock() // 1000))
    assert_error_shape(stale_key, 401)  # the old secret no longer signs anything
    await Worker(api.ctx).run_once()
    assert (await api.client.get(f"/v1/jobs/{owl_id}")).json()["status"] == "succeeded"
    assert (await api.client.get(f"/v1/jobs/{fox_id}")).json()["status"] == "running"


async def test_a_configured_secret_is_never_fetched(api, router, clock, secrets, make_settings):
    # REPLICATE_WEBHOOK_SECRET set: the keyring uses it as given.
    configured = build_adapters(make_settings(REPLICATE_WEBHOOK_SECRET=ROTATED))["replicate"]
    api.ctx.adapters = {**api.ctx.adapters, "replicate": configured}
    _, path = await submitted(api, "fox")
    start = json.dumps(prediction("p-fox", "processing"), separators=(",", ":")).encode()

    accepted = await api.client.post(path, content=start,
                                     headers=signed(start, at_s=clock() // 1000, secret=ROTATED))
    refused = await api.client.post(path, content=start, headers=signed(start, at_s=clock() // 1000))

    assert accepted.status_code == 200
    assert_error_shape(refused, 401)
    assert secrets.fetches == 0
