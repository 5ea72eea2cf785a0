"""The CometAPI adapter: BFL's protocol behind Bearer auth, CometAPI's error envelope (respx)."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest
import respx

from service.errors import CallbackRejected, ProviderRejected, ProviderRetryable
from service.providers.base import Accepted, ProviderState, RawResponse, SubmitOrder
from service.providers.cometapi import CometApiAdapter
from service.providers.transport import send
from service.signing import Verdict
from service.simulator import SimulatorConfig, create_simulator_app

BASE = "https://api.cometapi.com"
KEY = "sk-comet-test"
ADAPTER = CometApiAdapter(BASE, KEY, ("*.bfl.ai", "*.cometapi.com"))
HOOK = "https://hooks.example.com/v1/callbacks/cometapi/tok"


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_mocked=True)


@pytest.fixture
async def client(router: respx.Router) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as c:
        yield c


def raw(status: int, body: object = None, *, text: str | None = None, **headers: str) -> RawResponse:
    data = text.encode() if text is not None else json.dumps(body).encode()
    return RawResponse(status, headers, data)


def comet_error(message: str, code: str = "") -> dict[str, object]:
    return {"error": {"message": message, "type": "comet_api_error", "param": "", "code": code}}


def test_adapter_identity_and_key_stays_out_of_repr():
    assert (ADAPTER.name, ADAPTER.supports_webhooks) == ("cometapi", True)
    assert ADAPTER.output_hosts == ("*.bfl.ai", "*.cometapi.com")
    assert KEY not in repr(ADAPTER)


@pytest.mark.anyio
async def test_submit_sends_bearer_key_bfl_fields_and_the_webhook(router, client):
    route = router.post(f"{BASE}/flux/v1/flux-kontext-pro").mock(return_value=httpx.Response(
        200, json={"id": "task-1", "polling_url": f"{BASE}/flux/v1/get_result?id=task-1"}))
    order = SubmitOrder("job-1", "flux-kontext-pro",
                        {"prompt": "a red fox", "image_url": "https://img.example.com/in.png",
                         "aspect_ratio": "1:1", "seed": 3, "output_format": "png"},
                        HOOK, "whsec-1")

    answer = await send(client, ADAPTER.submit_call(order), timeout=5)

    request = route.calls.last.request
    assert request.method == "POST"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert "x-key" not in request.headers
    assert json.loads(request.content) == {
        "prompt": "a red fox", "input_image": "https://img.example.com/in.png",
        "aspect_ratio": "1:1", "seed": 3, "output_format": "png",
        "webhook_url": HOOK, "webhook_secret": "whsec-1"}
    assert ADAPTER.parse_submit(answer, now_ms=0) == Accepted(
        "task-1", f"{BASE}/flux/v1/get_result?id=task-1")


def test_submit_without_a_webhook_sends_no_webhook_fields():
    call = ADAPTER.submit_call(SubmitOrder("j", "flux-pro-1.1", {"prompt": "p"}, None, None))
    assert call.url == f"{BASE}/flux/v1/flux-pro-1.1"
    assert call.json == {"prompt": "p"}


@pytest.mark.parametrize(("polling_url", "expected"), [
    (None, f"{BASE}/flux/v1/get_result?id=t%2F1"),
    (f"{BASE}/flux/v1/get_result?id=t%2F1", f"{BASE}/flux/v1/get_result?id=t%2F1"),
    ("https://eu.cometapi.com/flux/v1/get_result?id=t", "https://eu.cometapi.com/flux/v1/get_result?id=t"),
    ("https://evil.example.net/flux/v1/get_result?id=t", f"{BASE}/flux/v1/get_result?id=t%2F1"),
    ("https://api.bfl.ai/v1/get_result?id=t", f"{BASE}/flux/v1/get_result?id=t%2F1"),
], ids=["none", "base-host", "cometapi-subdomain", "foreign-host", "bfl-host"])
def test_polling_url_receives_the_key_only_on_cometapi_hosts(polling_url, expected):
    call = ADAPTER.status_call("t/1", polling_url)
    assert (call.method, call.url) == ("GET", expected)
    assert call.headers["Authorization"] == f"Bearer {KEY}"


STATUS_CASES = [
    ("Pending", {"status": "Pending", "progress": 0.4}, ProviderState.PENDING),
    ("Ready", {"status": "Ready", "result": {"sample": "https://delivery.eu2.bfl.ai/s.jpeg"}},
     ProviderState.READY),
    ("Error", {"status": "Error", "details": {"reason": "boom"}}, ProviderState.FAILED),
    ("Request Moderated", {"status": "Request Moderated"}, ProviderState.MODERATED),
    ("Content Moderated", {"status": "Content Moderated"}, ProviderState.MODERATED),
    ("Task not found", {"status": "Task not found"}, ProviderState.NOT_FOUND),
    ("unknown", {"status": "Warming Up"}, ProviderState.PENDING),
    ("ready-without-url", {"status": "Ready", "result": None}, ProviderState.FAILED),
]


@pytest.mark.parametrize(("body", "state"), [c[1:] for c in STATUS_CASES],
                         ids=[c[0] for c in STATUS_CASES])
def test_every_bfl_status_is_mapped(body, state):
    report = ADAPTER.parse_status(raw(200, {"id": "t", **body}), now_ms=0)
    assert report.state is state
    assert report.provider_job_id == "t"
    if state is ProviderState.READY:
        assert report.output_urls == ("https://delivery.eu2.bfl.ai/s.jpeg",)


def test_a_404_from_get_result_is_not_found():
    report = ADAPTER.parse_status(raw(404, comet_error("no such task")), now_ms=0)
    assert report.state is ProviderState.NOT_FOUND


ERROR_CASES = [
    ("400", raw(400, comet_error("width must be a multiple of 32", "invalid_request")),
     ProviderRejected),
    ("401", raw(401, comet_error("Invalid token", "invalid_api_key")), ProviderRejected),
    ("403", raw(403, comet_error("blocked")), ProviderRejected),
    ("429", raw(429, comet_error("saturated"), **{"retry-after": "9"}), ProviderRetryable),
    ("500", raw(500, comet_error("upstream failed")), ProviderRetryable),
    ("500-invalid_request", raw(500, comet_error("bad model params", "invalid_request")),
     ProviderRejected),
    ("503", raw(503, comet_error("maintenance")), ProviderRetryable),
    ("504", raw(504, text="<html><body>504 Gateway Time-out</body></html>"), ProviderRetryable),
    ("524", raw(524, text="<!DOCTYPE html><title>A timeout occurred</title>"), ProviderRetryable),
    ("502-html", raw(502, text="<html><body>502 Bad Gateway</body></html>"), ProviderRetryable),
]


@pytest.mark.parametrize(("response", "error"), [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
@pytest.mark.parametrize("stage", ["submit", "status"])
def test_errors_are_classified_as_cometapi_documents(stage, response, error):
    parse = ADAPTER.parse_submit if stage == "submit" else ADAPTER.parse_status
    with pytest.raises(error) as caught:
        parse(response, now_ms=0)
    assert caught.value.status == response.status
    assert f"HTTP {response.status}" in caught.value.message


def test_the_error_envelopes_message_reaches_the_job():
    with pytest.raises(ProviderRejected) as caught:
        ADAPTER.parse_submit(raw(500, comet_error("prompt is required (request id: 42)",
                                                  "invalid_request")), now_ms=0)
    assert "prompt is required (request id: 42)" in caught.value.message


def test_retry_after_is_read_from_a_429():
    with pytest.raises(ProviderRetryable) as caught:
        ADAPTER.parse_submit(raw(429, comet_error("slow down"), **{"retry-after": "12"}), now_ms=0)
    assert caught.value.retry_after == 12


def test_a_2xx_submit_answer_without_an_id_fails_loudly():
    with pytest.raises(ProviderRejected):
        ADAPTER.parse_submit(raw(200, text="<html>ok</html>"), now_ms=0)


BODY = b'{"id":"t","status":"Ready"}'
# Known answer: hex HMAC-SHA256(b"whsec-1", BODY).
BODY_MAC = "e56a21a90ae3fd351867e76d75518ef3dc8b873493abe01bad9c89fa94381067"


@pytest.mark.parametrize("headers", [
    {"x-bfl-signature": f"sha256={BODY_MAC}"},
    httpx.Headers({"X-BFL-Signature": f"sha256={BODY_MAC.upper()}"}),  # case-insensitive, as served
    {"x-bfl-signature": BODY_MAC},
    {"x-webhook-secret": "whsec-1"},
], ids=["prefixed", "upper-hex", "bare-hex", "shared-secret"])
def test_every_bfl_signature_variant_verifies(headers):
    assert ADAPTER.verify_callback(headers, BODY, "whsec-1") is Verdict.VERIFIED


@pytest.mark.parametrize(("headers", "secret", "code"), [
    ({"x-bfl-signature": f"sha256={BODY_MAC}"}, "another-secret", "bad_signature"),
    ({"x-bfl-signature": "sha256=" + "0" * 64}, "whsec-1", "bad_signature"),
    ({"x-bfl-signature": "sha256=not-hex"}, "whsec-1", "malformed_signature"),
    ({"x-webhook-secret": "guess"}, "whsec-1", "bad_signature"),
    ({"x-bfl-signature": f"sha256={BODY_MAC}"}, None, "callback_rejected"),
], ids=["wrong-secret", "wrong-mac", "malformed", "wrong-shared-secret", "job-without-secret"])
def test_forged_callbacks_are_rejected(headers, secret, code):
    with pytest.raises(CallbackRejected) as caught:
        ADAPTER.verify_callback(headers, BODY, secret)
    assert (caught.value.status_code, caught.value.code) == (401, code)


def test_a_tampered_body_does_not_verify():
    with pytest.raises(CallbackRejected):
        ADAPTER.verify_callback({"x-bfl-signature": BODY_MAC}, BODY + b" ", "whsec-1")


def test_an_unsigned_callback_is_only_a_hint():
    assert ADAPTER.verify_callback({"content-type": "application/json"}, BODY, "whsec-1") \
        is Verdict.UNSIGNED


@pytest.mark.parametrize(("body", "state", "urls"), [
    ({"id": "t", "status": "Ready", "result": {"sample": "https://d.bfl.ai/s.jpg"}}, "ready",
     ("https://d.bfl.ai/s.jpg",)),
    ({"task_id": "t", "status": "SUCCESS", "result": {"sample": "https://d.bfl.ai/s.jpg"}}, "ready",
     ("https://d.bfl.ai/s.jpg",)),
    ({"id": "t", "status": "Error", "error": "content_policy_violation"}, "failed", ()),
    ({"id": "t", "status": "Content Moderated"}, "moderated", ()),
    # An undocumented success shape must not fail a paid job: polling decides (providers.md §b.3).
    ({"id": "t", "status": "Ready", "data": {"url": "https://d.bfl.ai/s.jpg"}}, "running", ()),
], ids=["bfl-ready", "community-success", "error", "moderated", "ready-in-unknown-shape"])
def test_callbacks_are_read_like_bfls(body, state, urls):
    report = ADAPTER.parse_callback(json.dumps(body).encode())
    assert (report.state.value, report.output_urls, report.provider_job_id) == (state, urls, "t")


@pytest.mark.parametrize("body", [b"<html>", b"[1, 2]"])
def test_a_callback_that_is_not_a_json_object_is_rejected(body):
    with pytest.raises(CallbackRejected) as caught:
        ADAPTER.parse_callback(body)
    assert caught.value.code == "malformed_callback"


def test_cometapi_has_no_cancel():
    assert ADAPTER.cancel_call("t") is None
    assert ADAPTER.parse_cancel(raw(200, {}), now_ms=0) is False


class SimClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def simulator(callbacks: list[httpx.Request]) -> AsyncIterator[tuple[httpx.AsyncClient, SimClock]]:
    """The embedded simulator in-process; its callbacks land in `callbacks`."""
    def receive(request: httpx.Request) -> httpx.Response:
        callbacks.append(request)
        return httpx.Response(204)

    clock = SimClock()
    app = create_simulator_app(SimulatorConfig(latency_s=(0.01, 0.02)),
                               transport=httpx.MockTransport(receive), rand=random.Random(3),
                               clock=clock)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app)) as client:
        yield client, clock


@pytest.mark.anyio
async def test_a_job_round_trips_through_the_simulator():
    adapter = CometApiAdapter("http://sim.test", KEY, ("sim.test",))
    callbacks: list[httpx.Request] = []
    async with simulator(callbacks) as (client, clock):
        order = SubmitOrder("job-1", "flux-pro-1.1", {"prompt": "a fox", "width": 512,
                                                      "height": 512}, HOOK, "whsec-sim")
        accepted = adapter.parse_submit(await send(client, adapter.submit_call(order), timeout=5),
                                        now_ms=0)
        assert accepted.polling_url == f"http://sim.test/flux/v1/get_result?id={accepted.provider_job_id}"
        poll = adapter.status_call(accepted.provider_job_id, accepted.polling_url)
        assert poll.url == accepted.polling_url
        pending = adapter.parse_status(await send(client, poll, timeout=5), now_ms=0)
        assert pending.state is ProviderState.PENDING

        clock.now += 60
        done = adapter.parse_status(await send(client, poll, timeout=5), now_ms=0)
        with anyio.fail_after(5):
            while not callbacks:
                await anyio.sleep(0.01)

    assert done.state is ProviderState.READY
    [callback] = callbacks
    assert str(callback.url) == HOOK
    assert adapter.verify_callback(callback.headers, callback.content, "whsec-sim") is Verdict.VERIFIED
    report = adapter.parse_callback(callback.content)
    assert (report.state, report.provider_job_id) == (ProviderState.READY, accepted.provider_job_id)
    assert report.output_urls == done.output_urls
