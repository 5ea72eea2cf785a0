"""fal.ai's queue adapter: the exact requests it builds, every answer classified, the two-step
status (COMPLETED, then the result) through the poller, cancel's four answers."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from service.errors import CallbackRejected, ProviderRejected, ProviderRetryable
from service.providers.base import ProviderState, RawResponse, SubmitOrder
from service.providers.fal import FalAdapter, ed25519_keys, signed_message, verify_fal_signature
from service.providers.transport import send
from service.worker import Worker

QUEUE = "https://queue.fal.run"
ADAPTER = FalAdapter(QUEUE, "fal-secret-key", ("*.fal.media",))
REQUEST = f"{QUEUE}/fal-ai/flux-pro/requests/req-1"
IMAGE = "https://v3.fal.media/files/rabbit/abc.jpeg"
WEBHOOK = "https://hooks.example.com/v1/callbacks/fal/tok?x=1"


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> RawResponse:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return RawResponse(status, headers or {}, content)


def order(model: str = "fal-ai/flux-pro/v1.1", **values: Any) -> SubmitOrder:
    return SubmitOrder("job-1", model, values or {"prompt": "a fox"}, WEBHOOK, None)


# -- submit ---------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_submit_sends_the_native_input_to_the_queue_with_the_webhook_and_key() -> None:
    router = respx.Router(assert_all_mocked=True)
    route = router.post(url__startswith=f"{QUEUE}/fal-ai/flux-pro/v1.1").mock(
        return_value=httpx.Response(200, json={"request_id": "req-1"}))
    call = ADAPTER.submit_call(order(prompt="a fox", width=512, height=384, seed=7, safety_tolerance=3,
                                     prompt_upsampling=True, output_format="png"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as client:
        await send(client, call, timeout=5)

    sent = route.calls.last.request
    assert sent.method == "POST"
    assert sent.url.path == "/fal-ai/flux-pro/v1.1"
    assert parse_qs(sent.url.query.decode()) == {"fal_webhook": [WEBHOOK]}
    assert sent.headers["authorization"] == "Key fal-secret-key"
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.content) == {
        "prompt": "a fox", "image_size": {"width": 512, "height": 384}, "seed": 7,
        "safety_tolerance": "3", "enhance_prompt": True, "output_format": "png",
    }


def test_submit_renames_steps_guidance_and_the_ultra_reference_image() -> None:
    call = ADAPTER.submit_call(order("fal-ai/flux/dev", prompt="p", steps=20, guidance=4.5, width=640))
    assert call.json == {"prompt": "p", "num_inference_steps": 20, "guidance_scale": 4.5,
                         "image_size": {"width": 640, "height": 768}}
    ultra = ADAPTER.submit_call(order("fal-ai/flux-pro/v1.1-ultra", prompt="p",
                                      image_prompt="https://x.example/a.png", image_prompt_strength=0.3,
                                      aspect_ratio="21:9", raw=True))
    assert ultra.json == {"prompt": "p", "image_url": "https://x.example/a.png",
                          "image_prompt_strength": 0.3, "aspect_ratio": "21:9", "raw": True}


def test_submit_without_a_webhook_has_no_query_and_the_key_stays_out_of_repr() -> None:
    call = ADAPTER.submit_call(SubmitOrder("j", "fal-ai/flux/schnell", {"prompt": "p"}, None, None))
    assert call.url == f"{QUEUE}/fal-ai/flux/schnell"
    assert "fal-secret-key" not in repr(call) and "fal-secret-key" not in repr(ADAPTER)


def test_submit_answer_gives_the_request_id_and_its_status_url() -> None:
    accepted = ADAPTER.parse_submit(answer(200, {
        "request_id": "req-1", "response_url": REQUEST, "status_url": f"{REQUEST}/status",
        "cancel_url": f"{REQUEST}/cancel"}), now_ms=0)
    assert (accepted.provider_job_id, accepted.polling_url) == ("req-1", f"{REQUEST}/status")
    # Only the response_url: the status URL is derived from it.
    derived = ADAPTER.parse_submit(answer(200, {"request_id": "r", "response_url": REQUEST}), now_ms=0)
    assert derived.polling_url == f"{REQUEST}/status"
    # A URL elsewhere would receive the key: not kept.
    foreign = ADAPTER.parse_submit(answer(200, {"request_id": "r",
                                                "status_url": "https://evil.example/x/status"}), now_ms=0)
    assert foreign.polling_url is None


@pytest.mark.parametrize(("response", "error"), [
    (answer(200, {"status_url": f"{REQUEST}/status"}), ProviderRejected),  # no request_id
    (answer(422, {"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]}), ProviderRejected),
    (answer(401, {"detail": "Unauthorized"}), ProviderRejected),
    (answer(403, {"detail": "User is locked. Reason: Exhausted balance."}), ProviderRejected),
    (answer(429, {"detail": "rate limited"}, {"retry-after": "7"}), ProviderRetryable),
    (answer(503, b"<html>503</html>"), ProviderRetryable),
], ids=["no-request-id", "422-invalid", "401", "403-locked", "429", "503-html"])
def test_submit_errors_are_classified(response: RawResponse, error: type[Exception]) -> None:
    with pytest.raises(error):
        ADAPTER.parse_submit(response, now_ms=0)


# -- status and result ----------------------------------------------------------------------------

def test_status_calls_use_the_model_id_without_its_subpath() -> None:
    call = ADAPTER.status_call("req-1", f"{REQUEST}/status")
    assert (call.method, call.url) == ("GET", f"{REQUEST}/status")
    assert call.headers["Authorization"] == "Key fal-secret-key"
    with pytest.raises(ProviderRejected):  # no URL: the model id cannot be known
        ADAPTER.status_call("req-1", None)
    with pytest.raises(ProviderRejected):  # never send the key elsewhere
        ADAPTER.status_call("req-1", "https://evil.example/fal-ai/flux-pro/requests/req-1/status")


@pytest.mark.parametrize(("body", "state", "result_url"), [
    ({"status": "IN_QUEUE", "queue_position": 3, "response_url": REQUEST}, ProviderState.PENDING, None),
    ({"status": "IN_PROGRESS", "response_url": REQUEST, "logs": []}, ProviderState.RUNNING, None),
    ({"status": "COMPLETED", "response_url": REQUEST}, ProviderState.RUNNING, REQUEST),
    ({"status": "COMPLETED", "response_url": REQUEST, "error": "Request timed out",
      "error_type": "request_timeout"}, ProviderState.FAILED, None),
], ids=["IN_QUEUE", "IN_PROGRESS", "COMPLETED-fetch-the-result", "COMPLETED-with-error"])
def test_every_status_is_mapped(body: dict[str, Any], state: ProviderState, result_url: str | None) -> None:
    report = ADAPTER.parse_status(answer(200, body), now_ms=0)
    assert report.state is state
    assert report.result_url == result_url


@pytest.mark.parametrize(("response", "state"), [
    (answer(200, {"images": [{"url": IMAGE, "width": 1024, "height": 768}], "seed": 1,
                  "has_nsfw_concepts": [False]}), ProviderState.READY),
    (answer(200, {"images": [{"url": IMAGE}], "has_nsfw_concepts": [True]}), ProviderState.MODERATED),
    (answer(200, {"images": [], "seed": 1}), ProviderState.FAILED),
    (answer(422, {"detail": [{"loc": ["body", "prompt"], "type": "content_policy_violation",
                              "msg": "The content was flagged by a content checker."}]}),
     ProviderState.MODERATED),
    (answer(422, {"detail": [{"loc": ["body", "image_size"], "type": "value_error", "msg": "too big"}]}),
     ProviderState.FAILED),
    (answer(504, {"detail": "Request timed out", "error_type": "request_timeout"}), ProviderState.FAILED),
    (answer(503, {"detail": "x"}, {"x-fal-error-type": "runner_disconnected"}), ProviderState.FAILED),
    (answer(404, {"detail": "Request not found"}), ProviderState.NOT_FOUND),
], ids=["images", "all-nsfw", "no-image", "422-content-policy", "422-validation", "504-request-error",
        "503-error-type-header", "404"])
def test_result_answers_are_mapped(response: RawResponse, state: ProviderState) -> None:
    report = ADAPTER.parse_status(response, now_ms=0)
    assert report.state is state
    if state is ProviderState.READY:
        assert report.output_urls == (IMAGE,)
    if state in (ProviderState.FAILED, ProviderState.MODERATED):
        assert report.message


@pytest.mark.parametrize(("response", "error"), [
    (answer(503, b"<html>bad gateway</html>"), ProviderRetryable),  # the queue's trouble, not the job's
    (answer(429, {"detail": "slow down"}), ProviderRetryable),
    (answer(401, {"detail": "Unauthorized"}), ProviderRejected),
    (answer(200, b"not json"), ProviderRejected),
    (answer(200, {"status": "COMPLETED"}), ProviderRejected),  # nowhere to fetch the result from
], ids=["503-html", "429", "401", "not-json", "completed-without-response-url"])
def test_failed_status_calls_are_classified(response: RawResponse, error: type[Exception]) -> None:
    with pytest.raises(error):
        ADAPTER.parse_status(response, now_ms=0)


# -- callbacks (parsing; signatures are tests/test_fal_callbacks.py) --------------------------------

@pytest.mark.parametrize(("body", "state"), [
    ({"request_id": "req-1", "status": "OK", "payload": {"images": [{"url": IMAGE}], "seed": 3}},
     ProviderState.READY),
    ({"request_id": "req-1", "status": "ERROR", "error": "Invalid status code: 422",
      "payload": {"detail": [{"loc": ["body", "prompt"], "msg": "bad", "type": "value_error"}]}},
     ProviderState.FAILED),
    ({"request_id": "req-1", "status": "ERROR", "error": "Invalid status code: 422",
      "payload": {"detail": [{"loc": ["body", "prompt"], "type": "content_policy_violation"}]}},
     ProviderState.MODERATED),
    ({"request_id": "req-1", "status": "OK", "payload": None,
      "payload_error": "Response payload is not JSON serializable"}, ProviderState.RUNNING),
], ids=["OK", "ERROR", "ERROR-content-policy", "payload_error-polls-for-the-result"])
def test_callback_bodies_are_mapped(body: dict[str, Any], state: ProviderState) -> None:
    report = ADAPTER.parse_callback(json.dumps(body).encode())
    assert report.state is state
    assert report.provider_job_id == "req-1"
    assert report.result_url is None


def test_the_jwks_keeps_only_ed25519_keys() -> None:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    jwks = {"keys": [{"kty": "RSA", "n": "abc", "e": "AQAB"}, {"kty": "OKP", "crv": "X25519", "x": x},
                     {"kty": "OKP", "crv": "Ed25519", "x": "not base64!"},
                     {"kty": "OKP", "crv": "Ed25519", "x": x}]}
    assert ed25519_keys(jwks) == (raw,)
    with pytest.raises(ProviderRejected):
        ed25519_keys({"keys": [{"kty": "RSA"}]})
    keys = ADAPTER.parse_keys(answer(200, jwks), now_ms=0)
    assert keys.values == (raw,)
    assert ADAPTER.keys_call().headers.get("Authorization") is None  # the key stays with the queue


# A known-answer vector, so the signed message's layout cannot drift: the public key of the
# private key bytes 00..1f, and its signature over the message below (Ed25519 is deterministic).
KAT_PUBLIC = bytes.fromhex("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
KAT_BODY = b'{"request_id":"req-1","status":"OK"}'
KAT_SIGNATURE = ("b918344e4f89b9d23406de04b64ce69724e0aee6c2a963c04bc1ca954263346a"
                 "b05df6697c5fa97b23a71273f8b278a42a3f89cdd0152902213600a25da4fd00")


def test_the_signed_message_and_a_known_signature() -> None:
    assert signed_message("req-1", "user-1", "1790000000", KAT_BODY) == (
        b"req-1\nuser-1\n1790000000\n"
        b"b80370b75cd96f0bf72723b67dd8887262515dd3bb293eefe367634ae5eb6fae")
    headers = {"X-Fal-Webhook-Request-Id": "req-1", "X-Fal-Webhook-User-Id": "user-1",
               "X-Fal-Webhook-Timestamp": "1790000000", "X-Fal-Webhook-Signature": KAT_SIGNATURE}
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    verify_fal_signature(headers, KAT_BODY, (other, KAT_PUBLIC), now_s=1_790_000_000 + 299)
    with pytest.raises(CallbackRejected) as stale:
        verify_fal_signature(headers, KAT_BODY, (KAT_PUBLIC,), now_s=1_790_000_000 + 301)
    assert stale.value.code == "stale_timestamp"
    with pytest.raises(CallbackRejected) as malformed:
        verify_fal_signature({**headers, "X-Fal-Webhook-Signature": "zz"}, KAT_BODY, (KAT_PUBLIC,),
                             now_s=1_790_000_000)
    assert malformed.value.code == "bad_signature"


# -- cancel -----------------------------------------------------------------------------------------

def test_cancel_is_a_put_on_the_request_without_the_subpath() -> None:
    call = ADAPTER.cancel_call("req-1", f"{REQUEST}/status")
    assert call is not None
    assert (call.method, call.url) == ("PUT", f"{REQUEST}/cancel")
    assert ADAPTER.cancel_call("req-1", None) is None


@pytest.mark.parametrize(("response", "cancelled"), [
    (answer(200, {"status": "OK"}), True),
    (answer(202, {"status": "CANCELLATION_REQUESTED"}), True),
    (answer(400, {"status": "ALREADY_COMPLETED"}), False),
], ids=["OK", "CANCELLATION_REQUESTED", "ALREADY_COMPLETED"])
def test_cancel_answers(response: RawResponse, cancelled: bool) -> None:
    assert ADAPTER.parse_cancel(response, now_ms=0) is cancelled


def test_cancel_not_found_is_an_error_not_a_refusal() -> None:
    with pytest.raises(ProviderRejected, match="NOT_FOUND"):
        ADAPTER.parse_cancel(answer(404, {"status": "NOT_FOUND"}), now_ms=0)
    with pytest.raises(ProviderRetryable):
        ADAPTER.parse_cancel(answer(503, b"<html/>"), now_ms=0)


# -- through fluxhook ------------------------------------------------------------------------------

FAL_ENV = {"FAL_KEY": "fal-secret-key", "FAL_QUEUE_URL": QUEUE,
           "FAL_JWKS_URL": "https://rest.alpha.fal.ai/.well-known/jwks.json"}


@pytest.fixture
def make_settings(make_settings: Any) -> Any:
    return lambda **env: make_settings(**{**FAL_ENV, **env})


@pytest.fixture
def router() -> respx.Router:
    router = respx.Router(assert_all_mocked=True)
    router.post(url__startswith=f"{QUEUE}/fal-ai/flux-pro/v1.1").mock(return_value=httpx.Response(
        200, json={"request_id": "req-1", "response_url": REQUEST, "status_url": f"{REQUEST}/status",
                   "cancel_url": f"{REQUEST}/cancel"}))
    return router


@pytest.fixture
def transport(router: respx.Router) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(router.async_handler)


async def submitted(api: Any) -> str:
    response = await api.client.post("/v1/jobs", json={
        "provider": "fal", "model": "flux-pro-1.1",
        "input": {"prompt": "a fox", "width": 512, "height": 384}})
    assert response.status_code == 202, response.text
    await Worker(api.ctx).run_once()
    job_id: str = response.json()["id"]
    return job_id


@pytest.mark.anyio
async def test_a_completed_status_is_followed_by_the_result_and_the_job_succeeds_by_polling(
    api: Any, router: respx.Router, clock: Any
) -> None:
    status = router.get(f"{REQUEST}/status").mock(return_value=httpx.Response(
        200, json={"status": "COMPLETED", "request_id": "req-1", "response_url": REQUEST}))
    result = router.get(REQUEST).mock(return_value=httpx.Response(
        200, json={"images": [{"url": IMAGE, "content_type": "image/jpeg"}], "seed": 1}))
    image = router.get(IMAGE).mock(return_value=httpx.Response(
        200, content=b"\xff\xd8\xff\xe0 jpeg", headers={"content-type": "image/jpeg"}))
    job_id = await submitted(api)
    clock.advance(api.ctx.settings.poll_grace_s + 1)
    await Worker(api.ctx).run_once()
    await Worker(api.ctx).run_once()

    doc = (await api.client.get(f"/v1/jobs/{job_id}")).json()
    assert doc["status"] == "succeeded", doc
    assert doc["completion_source"] == "poll"
    assert (status.call_count, result.call_count, image.call_count) == (1, 1, 1)
    sent = router.calls[0].request
    assert urlsplit(str(sent.url)).path == "/fal-ai/flux-pro/v1.1"
    assert parse_qs(sent.url.query.decode())["fal_webhook"][0].startswith(
        "https://hooks.example.com/v1/callbacks/fal/")


@pytest.mark.anyio
async def test_cancelling_a_fal_job_cancels_the_request_at_fal(api: Any, router: respx.Router) -> None:
    cancel = router.put(f"{REQUEST}/cancel").mock(return_value=httpx.Response(
        202, json={"status": "CANCELLATION_REQUESTED"}))
    job_id = await submitted(api)
    doc = (await api.client.post(f"/v1/jobs/{job_id}/cancel")).json()
    assert doc["status"] == "cancelled"
    assert doc["error"]["message"] == "cancelled by request and at fal"
    assert cancel.call_count == 1
