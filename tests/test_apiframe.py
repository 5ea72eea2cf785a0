"""The Apiframe adapter: the exact generate request, every status, errors and signatures (respx)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest
import respx

from service.errors import CallbackRejected, ProviderRejected, ProviderRetryable
from service.providers.apiframe import ApiframeAdapter
from service.providers.base import Accepted, ProviderState, RawResponse, SubmitOrder
from service.providers.transport import send
from service.signing import Verdict
from service.simulator import SimulatorConfig, create_simulator_app
from service.simulator.callbacks import apiframe_signature

BASE = "https://api.apiframe.ai"
KEY = "afk_test_key"
ADAPTER = ApiframeAdapter(BASE, KEY, ("*.apiframe.ai",))
HOOK = "https://hooks.example.com/v1/callbacks/apiframe/tok"
UNIFIED = {
    "prompt": "a red fox", "width": 1024, "height": 768, "aspect_ratio": None, "seed": 7,
    "output_format": "jpeg", "output_quality": 90, "image_prompt": "https://img.example.com/r.png",
    "image_prompt_strength": 0.5, "prompt_upsampling": True, "raw": False,
}


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


def order(job_id: str = "job-1", webhook: str | None = HOOK, **input_: object) -> SubmitOrder:
    # Apiframe v2 has no webhook secret: whatever fluxhook holds must not be sent.
    return SubmitOrder(job_id, "flux-1.1-pro", input_ or UNIFIED, webhook, "whsec-unused")


def test_adapter_identity_and_key_stays_out_of_repr():
    assert (ADAPTER.name, ADAPTER.supports_webhooks, ADAPTER.output_hosts) == (
        "apiframe", True, ("*.apiframe.ai",))
    assert KEY not in repr(ADAPTER)


@pytest.mark.anyio
async def test_generate_sends_key_idempotency_key_flux_params_and_camelcase_webhook(router, client):
    route = router.post(f"{BASE}/v2/images/generate").mock(
        return_value=httpx.Response(202, json={"jobId": "a1b2", "status": "QUEUED"}))

    answer = await send(client, ADAPTER.submit_call(order()), timeout=5)

    request = route.calls.last.request
    assert request.method == "POST"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == "job-1"
    assert "authorization" not in request.headers
    assert json.loads(request.content) == {
        "prompt": "a red fox",
        "model": "flux-1.1-pro",
        "fluxParams": {"width": 1024, "height": 768, "seed": 7, "output_format": "jpg",
                       "output_quality": 90, "image_prompt": "https://img.example.com/r.png",
                       "image_prompt_strength": 0.5, "prompt_upsampling": True, "raw": False},
        "webhookUrl": HOOK,
        "webhookEvents": ["progress", "completed", "failed"],
    }
    assert ADAPTER.parse_submit(answer, now_ms=0) == Accepted("a1b2", f"{BASE}/v2/jobs/a1b2")


@pytest.mark.anyio
async def test_a_retried_generate_repeats_the_same_idempotency_key_and_body(router, client):
    route = router.post(f"{BASE}/v2/images/generate").mock(side_effect=[
        httpx.Response(503, text="<html><body>503 Service Unavailable</body></html>"),
        httpx.Response(202, json={"jobId": "a1b2", "status": "QUEUED"}),
    ])
    with pytest.raises(ProviderRetryable):
        ADAPTER.parse_submit(await send(client, ADAPTER.submit_call(order()), timeout=5), now_ms=0)
    accepted = ADAPTER.parse_submit(await send(client, ADAPTER.submit_call(order()), timeout=5),
                                    now_ms=0)
    assert accepted.provider_job_id == "a1b2"
    assert route.call_count == 2
    keys = {call.request.headers["idempotency-key"] for call in route.calls}
    bodies = {call.request.content for call in route.calls}
    assert (keys, len(bodies)) == ({"job-1"}, 1)
    assert ADAPTER.submit_call(order("job-2")).headers["Idempotency-Key"] == "job-2"


def test_without_a_webhook_no_webhook_fields_are_sent():
    call = ADAPTER.submit_call(order(webhook=None, prompt="p", output_format="png"))
    assert call.json == {"prompt": "p", "model": "flux-1.1-pro", "fluxParams": {"output_format": "png"}}


@pytest.mark.parametrize(("unified", "apiframe"), [("jpeg", "jpg"), ("png", "png"), ("webp", "webp")])
def test_output_format_is_spelled_apiframes_way(unified, apiframe):
    call = ADAPTER.submit_call(order(prompt="p", output_format=unified))
    assert call.json["fluxParams"]["output_format"] == apiframe


def test_an_image_to_edit_is_refused_rather_than_silently_dropped():
    with pytest.raises(ProviderRejected, match="image_url"):
        ADAPTER.submit_call(order(prompt="p", image_url="https://img.example.com/in.png"))


@pytest.mark.parametrize("answer", [
    raw(202, {"status": "QUEUED"}), raw(200, text="<html>accepted</html>")], ids=["no-id", "html"])
def test_a_2xx_without_a_job_id_is_retried_under_the_same_idempotency_key(answer):
    with pytest.raises(ProviderRetryable):
        ADAPTER.parse_submit(answer, now_ms=0)


@pytest.mark.parametrize("polling_url", [None, f"{BASE}/v2/jobs/a1b2", "https://evil.example.net/x"])
def test_status_reads_the_job_on_the_base_url_only(polling_url):
    call = ADAPTER.status_call("a1b2", polling_url)
    assert (call.method, call.url) == ("GET", f"{BASE}/v2/jobs/a1b2")
    assert call.headers["X-API-Key"] == KEY


CDN = "https://cdn.apiframe.ai/results/a1b2.png"
STATUS_CASES = [
    ("QUEUED", {"status": "QUEUED", "progress": 0}, ProviderState.PENDING, None, ()),
    ("PROCESSING", {"status": "PROCESSING", "progress": 45}, ProviderState.RUNNING, 0.45, ()),
    ("COMPLETED-string", {"status": "COMPLETED", "progress": 100, "result": CDN},
     ProviderState.READY, 1.0, (CDN,)),
    ("COMPLETED-images", {"status": "COMPLETED", "result": {"images": [CDN, CDN + "?2"]}},
     ProviderState.READY, 1.0, (CDN, CDN + "?2")),
    ("COMPLETED-no-result", {"status": "COMPLETED", "result": None}, ProviderState.FAILED, None, ()),
    ("FAILED", {"status": "FAILED", "error": "Provider returned an error: content policy violation"},
     ProviderState.FAILED, None, ()),
    ("unknown", {"status": "WARMING_UP"}, ProviderState.PENDING, None, ()),
]


@pytest.mark.parametrize(("body", "state", "progress", "urls"), [c[1:] for c in STATUS_CASES],
                         ids=[c[0] for c in STATUS_CASES])
def test_every_apiframe_status_is_mapped(body, state, progress, urls):
    report = ADAPTER.parse_status(raw(200, {"id": "a1b2", "model": "flux-1.1-pro", **body}), now_ms=0)
    assert (report.state, report.progress, report.output_urls) == (state, progress, urls)
    assert report.provider_job_id == "a1b2"


def test_a_failed_job_carries_apiframes_reason():
    report = ADAPTER.parse_status(raw(200, {"id": "a", "status": "FAILED", "error": "no credits"}),
                                  now_ms=0)
    assert report.message == "no credits"


def test_an_unknown_job_is_not_found():
    report = ADAPTER.parse_status(raw(404, {"error": {"code": "not_found", "message": "Job not found"}}),
                                  now_ms=0)
    assert report.state is ProviderState.NOT_FOUND


ERROR_CASES = [
    ("401-required", raw(401, {"error": "API key is required"}), ProviderRejected, "API key is required"),
    ("401-invalid", raw(401, {"message": "Invalid API key"}), ProviderRejected, "Invalid API key"),
    ("403", raw(403, {"error": {"code": "forbidden", "message": "API key is inactive"}}),
     ProviderRejected, "API key is inactive"),
    ("402", raw(402, {"error": {"message": "Insufficient credits"}}), ProviderRejected,
     "Insufficient credits"),
    ("429", raw(429, {"error": "slow down"}, **{"retry-after": "7"}), ProviderRetryable, "slow down"),
    ("500", raw(500, {"error": "boom"}), ProviderRetryable, "boom"),
    ("502-html", raw(502, text="<html><body>502 Bad Gateway</body></html>"), ProviderRetryable,
     "502 Bad Gateway"),
    ("503-empty", raw(503, text=""), ProviderRetryable, "(empty body)"),
]


@pytest.mark.parametrize(("response", "error", "words"), [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
@pytest.mark.parametrize("stage", ["submit", "status"])
def test_errors_are_classified_and_keep_apiframes_words(stage, response, error, words):
    parse = ADAPTER.parse_submit if stage == "submit" else ADAPTER.parse_status
    with pytest.raises(error) as caught:
        parse(response, now_ms=0)
    assert words in caught.value.message
    assert caught.value.status == response.status


def test_retry_after_is_read_from_a_429():
    with pytest.raises(ProviderRetryable) as caught:
        ADAPTER.parse_submit(raw(429, {}, **{"retry-after": "12"}), now_ms=0)
    assert caught.value.retry_after == 12


BODY = b'{"event":"completed","jobId":"j-1","status":"COMPLETED"}'
# Known answers for KEY and BODY: HMAC-SHA256 keyed with sha256(KEY) as hex text / raw bytes.
MAC_HEX_KEY = "e5b862e1d0ac1634f3782b098d46b5ff99b1fbda2fee7941dbf9db41762bd33e"
MAC_RAW_KEY = "733558bb2d5ab671ffa4357b66e2fc1cea6882ccbfb3a2f2b005e74b9a30e2c6"


def b64(hex_mac: str, *, alphabet: str = "standard", pad: bool = True) -> str:
    mac = bytes.fromhex(hex_mac)
    text = (base64.urlsafe_b64encode if alphabet == "urlsafe" else base64.b64encode)(mac).decode()
    return text if pad else text.rstrip("=")


SIGNATURES = [
    ("hex-key/hex", MAC_HEX_KEY),
    ("hex-key/base64", b64(MAC_HEX_KEY)),
    ("raw-key/hex", MAC_RAW_KEY),
    ("raw-key/base64", b64(MAC_RAW_KEY)),
    ("upper-hex", MAC_RAW_KEY.upper()),
    ("sha256-prefix", f"sha256={MAC_HEX_KEY}"),
    ("base64-unpadded", b64(MAC_HEX_KEY, pad=False)),
    ("base64-urlsafe", b64(MAC_RAW_KEY, alphabet="urlsafe")),
]


def test_the_known_answers_match_the_documented_recipe():
    digest = hashlib.sha256(KEY.encode()).digest()
    assert hmac.new(digest.hex().encode(), BODY, hashlib.sha256).hexdigest() == MAC_HEX_KEY
    assert hmac.new(digest, BODY, hashlib.sha256).hexdigest() == MAC_RAW_KEY


@pytest.mark.parametrize("signature", [s[1] for s in SIGNATURES], ids=[s[0] for s in SIGNATURES])
@pytest.mark.parametrize("secret", [None, "per-job-secret"], ids=["no-secret", "any-secret"])
def test_every_signature_encoding_and_key_form_verifies(signature, secret):
    headers = {"X-Webhook-Signature": signature, "X-Webhook-Event": "completed"}
    assert ADAPTER.verify_callback(headers, BODY, secret) is Verdict.VERIFIED


@pytest.mark.parametrize(("key_form", "encoding"), [
    ("hex", "hex"), ("hex", "base64"), ("raw", "hex"), ("raw", "base64")])
def test_the_simulators_independent_signer_agrees(key_form, encoding):
    signature = apiframe_signature(KEY, BODY, key_form=key_form, encoding=encoding)
    assert ADAPTER.verify_callback({"x-webhook-signature": signature}, BODY, None) is Verdict.VERIFIED


@pytest.mark.parametrize(("signature", "body", "key"), [
    (MAC_HEX_KEY, BODY + b" ", KEY),
    (MAC_HEX_KEY, BODY, "afk_other_key"),
    (b64(MAC_RAW_KEY), b'{"event":"completed","jobId":"j-2","status":"COMPLETED"}', KEY),
    ("0" * 64, BODY, KEY),
    (hashlib.sha256(BODY).hexdigest(), BODY, KEY),  # a plain hash, no key
], ids=["tampered-body", "other-account", "other-job", "zeros", "unkeyed-hash"])
def test_a_signature_matching_no_variant_is_rejected(signature, body, key):
    adapter = ApiframeAdapter(BASE, key, ())
    with pytest.raises(CallbackRejected) as caught:
        adapter.verify_callback({"x-webhook-signature": signature}, body, None)
    assert (caught.value.status_code, caught.value.code) == (401, "bad_signature")


@pytest.mark.parametrize("signature", [
    "", "not a signature", "zz" * 32, MAC_HEX_KEY[:-2], base64.b64encode(b"x" * 16).decode(),
    base64.b64encode(b"x" * 48).decode(), "sha256=",
], ids=["empty", "words", "non-hex", "short-hex", "base64-16-bytes", "base64-48-bytes", "bare-prefix"])
def test_a_malformed_signature_is_rejected(signature):
    with pytest.raises(CallbackRejected) as caught:
        ADAPTER.verify_callback({"x-webhook-signature": signature}, BODY, None)
    assert (caught.value.status_code, caught.value.code) == (401, "malformed_signature")


def test_an_unsigned_callback_is_only_a_hint():
    headers = {"content-type": "application/json", "x-webhook-event": "completed"}
    assert ADAPTER.verify_callback(headers, BODY, "whsec") is Verdict.UNSIGNED


CALLBACK_CASES = [
    ("completed", {"event": "completed", "status": "COMPLETED", "progress": 100, "result": CDN},
     ProviderState.READY, None, (CDN,)),
    ("completed-images", {"event": "completed", "status": "COMPLETED", "result": {"images": [CDN]}},
     ProviderState.READY, None, (CDN,)),
    ("failed", {"event": "failed", "status": "FAILED", "error": "content policy violation"},
     ProviderState.FAILED, "content policy violation", ()),
    ("progress", {"event": "progress", "status": "PROCESSING", "progress": 45},
     ProviderState.RUNNING, None, ()),
    # A progress event never ends a job, whatever else it carries.
    ("progress-100", {"event": "progress", "status": "COMPLETED", "progress": 100, "result": CDN},
     ProviderState.RUNNING, None, ()),
    ("no-event", {"status": "COMPLETED", "result": CDN}, ProviderState.READY, None, (CDN,)),
]


@pytest.mark.parametrize(("body", "state", "message", "urls"), [c[1:] for c in CALLBACK_CASES],
                         ids=[c[0] for c in CALLBACK_CASES])
def test_every_webhook_event_is_understood(body, state, message, urls):
    report = ADAPTER.parse_callback(json.dumps({"jobId": "j-1", "model": "flux-1.1-pro", **body}).encode())
    assert (report.state, report.output_urls, report.provider_job_id) == (state, urls, "j-1")
    if message is not None:
        assert report.message == message


def test_a_progress_event_reports_a_fraction():
    report = ADAPTER.parse_callback(b'{"event":"progress","jobId":"j","status":"PROCESSING","progress":45}')
    assert report.progress == 0.45


@pytest.mark.parametrize("body", [b"not json", b'"a string"'])
def test_a_callback_that_is_not_a_json_object_is_rejected(body):
    with pytest.raises(CallbackRejected) as caught:
        ADAPTER.parse_callback(body)
    assert (caught.value.status_code, caught.value.code) == (400, "malformed_callback")


def test_apiframe_has_no_cancel():
    assert ADAPTER.cancel_call("j") is None
    assert ADAPTER.parse_cancel(raw(200, {}), now_ms=0) is False


class SimClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def simulator(config: SimulatorConfig, callbacks: list[httpx.Request]
                    ) -> AsyncIterator[tuple[httpx.AsyncClient, SimClock]]:
    """The embedded simulator in-process; its webhooks land in `callbacks`."""
    def receive(request: httpx.Request) -> httpx.Response:
        callbacks.append(request)
        return httpx.Response(204)

    clock = SimClock()
    app = create_simulator_app(config, transport=httpx.MockTransport(receive),
                               rand=random.Random(5), clock=clock)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app)) as client:
        yield client, clock


@pytest.mark.anyio
@pytest.mark.parametrize(("key_form", "encoding", "shape"), [
    ("hex", "hex", "string"), ("hex", "base64", "images"), ("raw", "hex", "images"),
    ("raw", "base64", "string")])
async def test_a_job_round_trips_through_the_simulator(key_form, encoding, shape):
    adapter = ApiframeAdapter("http://sim.test", KEY, ("sim.test",))
    config = SimulatorConfig(latency_s=(0.01, 0.02), apiframe_signature_key=key_form,
                             apiframe_signature_encoding=encoding, apiframe_result_shape=shape)
    callbacks: list[httpx.Request] = []
    async with simulator(config, callbacks) as (client, clock):
        submit = adapter.submit_call(order(prompt="a fox", width=512, height=512, output_format="jpeg"))
        accepted = adapter.parse_submit(await send(client, submit, timeout=5), now_ms=0)
        again = adapter.parse_submit(await send(client, submit, timeout=5), now_ms=0)
        assert again == accepted  # the Idempotency-Key made the retry harmless
        poll = adapter.status_call(accepted.provider_job_id, accepted.polling_url)
        assert adapter.parse_status(await send(client, poll, timeout=5), now_ms=0).state is \
            ProviderState.PENDING

        clock.now += 60
        done = adapter.parse_status(await send(client, poll, timeout=5), now_ms=0)
        with anyio.fail_after(5):
            while not any(c.headers.get("x-webhook-event") == "completed" for c in callbacks):
                await anyio.sleep(0.01)

    assert done.state is ProviderState.READY
    assert done.output_urls[0].startswith("http://sim.test/")
    events = {}
    for callback in callbacks:
        assert adapter.verify_callback(callback.headers, callback.content, None) is Verdict.VERIFIED
        events.setdefault(callback.headers["x-webhook-event"], []).append(
            adapter.parse_callback(callback.content))
    assert sorted((name, len(found)) for name, found in events.items()) == [
        ("completed", 1), ("progress", 2)]
    [completed] = events["completed"]
    assert (completed.state, completed.provider_job_id) == (ProviderState.READY,
                                                            accepted.provider_job_id)
    assert completed.output_urls == done.output_urls
    assert {r.state for r in events["progress"]} == {ProviderState.RUNNING}
