"""The Replicate adapter: the exact prediction request, every status, errors, cancel, the account's
signing secret and Standard Webhooks verification (respx, pure)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from service.catalog import Catalog
from service.catalog.validation import validate_input
from service.errors import CallbackRejected, ConfigError, ProviderRejected, ProviderRetryable
from service.providers.base import (
    Accepted,
    AccountSigned,
    CallbackKeys,
    JobSigned,
    ProviderState,
    RawResponse,
    StatusReport,
    SubmitOrder,
)
from service.providers.replicate import ReplicateAdapter, native_input
from service.providers.transport import send
from service.settings import Settings
from service.simulator.callbacks import standard_webhook_signature
from service.submitter import another_provider_could_fix
from service.webhook_signing import decode_secret

BASE = "https://api.replicate.com"
TOKEN = "r8_test_token"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks spec's example secret
ADAPTER = ReplicateAdapter(BASE, TOKEN, ("replicate.delivery", "*.replicate.delivery"))
MODEL = "black-forest-labs/flux-1.1-pro"
HOOK = "https://hooks.example.com/v1/callbacks/replicate/tok"
DELIVERY = "https://replicate.delivery/xezq"
NOW_MS = 1_790_000_000_000
NOW_S = NOW_MS // 1000


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


def prediction(pid: str = "p-1", status: str = "starting", **fields: object) -> dict[str, object]:
    root = f"{BASE}/v1/predictions/{pid}"
    return {"id": pid, "model": MODEL, "version": "hidden", "input": {"prompt": "a fox"},
            "logs": "", "output": None, "error": None, "status": status, "data_removed": False,
            "created_at": "2026-11-30T21:00:00.000Z",
            "urls": {"get": root, "cancel": f"{root}/cancel"}, **fields}


def test_adapter_is_account_signed_and_keeps_its_secrets_out_of_repr():
    adapter = ReplicateAdapter(BASE, TOKEN, (), webhook_secret=SECRET)
    assert isinstance(adapter, AccountSigned)
    assert (adapter.name, adapter.supports_webhooks, adapter.submit_idempotent) == ("replicate", True, False)
    assert TOKEN not in repr(adapter) and SECRET not in repr(adapter)


# Submit


@pytest.mark.anyio
async def test_submit_posts_the_input_to_the_model_with_webhook_bearer_and_event_filter(router, client):
    route = router.post(f"{BASE}/v1/models/{MODEL}/predictions").mock(
        return_value=httpx.Response(201, json=prediction("p-1")))
    order = SubmitOrder("job-1", MODEL, {"prompt": "a fox", "width": 512, "height": 384, "seed": 7,
                                         "output_format": "jpeg", "safety_tolerance": None},
                        HOOK, "whsec-per-job-unused")

    answer = await send(client, ADAPTER.submit_call(order), timeout=5)

    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.raw_path == b"/v1/models/black-forest-labs/flux-1.1-pro/predictions"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert "prefer" not in request.headers  # asynchronous: never Prefer: wait
    assert json.loads(request.content) == {
        "input": {"prompt": "a fox", "width": 512, "height": 384, "aspect_ratio": "custom", "seed": 7,
                  "output_format": "jpg"},
        "webhook": HOOK,
        "webhook_events_filter": ["start", "completed"],
    }
    assert ADAPTER.parse_submit(answer, now_ms=NOW_MS) == Accepted("p-1", f"{BASE}/v1/predictions/p-1")


def test_submit_without_a_webhook_url_sends_no_webhook_fields():
    call = ADAPTER.submit_call(SubmitOrder("job-1", MODEL, {"prompt": "a fox"}, None, None))
    assert call.json == {"input": {"prompt": "a fox"}}


@pytest.mark.parametrize(("model", "unified", "native"), [
    ("black-forest-labs/flux-kontext-pro", {"prompt": "x", "image_url": "https://i/x.png"},
     {"prompt": "x", "input_image": "https://i/x.png"}),
    ("black-forest-labs/flux-2-pro", {"prompt": "x", "image_url": "https://i/x.png"},
     {"prompt": "x", "input_images": ["https://i/x.png"]}),
    ("black-forest-labs/flux-dev", {"prompt": "x", "steps": 28, "guidance": 3, "go_fast": False},
     {"prompt": "x", "num_inference_steps": 28, "guidance": 3, "go_fast": False}),
    ("black-forest-labs/flux-1.1-pro", {"prompt": "x", "aspect_ratio": "16:9", "width": 512},
     {"prompt": "x", "aspect_ratio": "16:9", "width": 512}),  # a ratio given is kept
    ("black-forest-labs/flux-1.1-pro-ultra", {"prompt": "x", "raw": True, "output_format": "png"},
     {"prompt": "x", "raw": True, "output_format": "png"}),
], ids=["kontext-image", "flux2-images", "dev-steps", "ratio-kept", "ultra-raw"])
def test_unified_input_becomes_replicates_field_names(model, unified, native):
    assert native_input(model, unified) == native


def test_a_2xx_submit_answer_without_an_id_is_refused():
    with pytest.raises(ProviderRejected):
        ADAPTER.parse_submit(raw(201, {"status": "starting"}), now_ms=NOW_MS)


# Status


@pytest.mark.parametrize(("body", "expected"), [
    (prediction(status="starting"), StatusReport(ProviderState.PENDING, "p-1")),
    (prediction(status="processing", logs="Using seed: 1\n 42%|████"),
     StatusReport(ProviderState.RUNNING, "p-1", progress=0.42)),
    (prediction(status="succeeded", output="https://replicate.delivery/x/out.webp"),
     StatusReport(ProviderState.READY, "p-1", ("https://replicate.delivery/x/out.webp",), 1.0)),
    (prediction(status="succeeded", output=[f"{DELIVERY}/a.webp", f"{DELIVERY}/b.webp"]),
     StatusReport(ProviderState.READY, "p-1", (f"{DELIVERY}/a.webp", f"{DELIVERY}/b.webp"), 1.0)),
    (prediction(status="succeeded", output=None, data_removed=True),
     StatusReport(ProviderState.FAILED, "p-1",
                  message="succeeded with its outputs were removed (Replicate keeps them an hour)")),
    (prediction(status="failed", error="CUDA out of memory"),
     StatusReport(ProviderState.FAILED, "p-1", message="failed: CUDA out of memory")),
    (prediction(status="failed", error="The input or output was flagged as sensitive. (E005)"),
     StatusReport(ProviderState.MODERATED, "p-1",
                  message="failed: The input or output was flagged as sensitive. (E005)")),
    (prediction(status="canceled"),
     StatusReport(ProviderState.CANCELLED, "p-1", message="canceled at Replicate")),
    (prediction(status="aborted"),
     StatusReport(ProviderState.FAILED, "p-1", message="aborted: no reason given")),
    (prediction(status="queued-someday"), StatusReport(ProviderState.PENDING, "p-1")),
], ids=["starting", "processing", "succeeded-string", "succeeded-list", "data-removed", "failed",
        "moderated", "canceled", "aborted", "unknown"])
def test_every_status_is_mapped(body, expected):
    assert ADAPTER.parse_status(raw(200, body), now_ms=NOW_MS) == expected
    # A callback carries the same prediction object.
    assert ADAPTER.parse_callback(json.dumps(body).encode()) == expected


def test_an_unknown_prediction_is_not_found():
    report = ADAPTER.parse_status(raw(404, {"title": "Not found", "detail": "gone", "status": 404}),
                                  now_ms=NOW_MS)
    assert report.state is ProviderState.NOT_FOUND


def test_polling_follows_urls_get_only_to_replicates_api():
    assert ADAPTER.status_call("p-1", f"{BASE}/v1/predictions/p-1").url == f"{BASE}/v1/predictions/p-1"
    elsewhere = ADAPTER.status_call("p-1", "https://evil.example/v1/predictions/p-1")
    assert elsewhere.url == f"{BASE}/v1/predictions/p-1"
    assert elsewhere.headers["Authorization"] == f"Bearer {TOKEN}"


# Errors


def test_a_429_is_retryable_with_its_body_and_retry_after():
    body = {"title": "Request was throttled", "status": 429,
            "detail": "Request was throttled. Your rate limit resets in ~30s."}
    with pytest.raises(ProviderRetryable) as with_header:
        ADAPTER.parse_submit(raw(429, body, **{"retry-after": "7"}), now_ms=NOW_MS)
    assert with_header.value.retry_after == 7.0
    assert "Your rate limit resets in ~30s" in with_header.value.message
    with pytest.raises(ProviderRetryable) as from_body:
        ADAPTER.parse_submit(raw(429, body), now_ms=NOW_MS)
    assert from_body.value.retry_after == 30.0  # no header: the body's own words
    assert another_provider_could_fix(from_body.value)


@pytest.mark.parametrize(("response", "kind", "fixable"), [
    (raw(503, text="<html><body>502 Bad Gateway</body></html>"), ProviderRetryable, True),
    (raw(500, {"detail": "internal"}), ProviderRetryable, True),
    (raw(401, {"title": "Unauthenticated", "detail": "Invalid token.", "status": 401}),
     ProviderRejected, False),
    (raw(422, {"title": "Input validation failed", "detail": "- input.prompt: required", "status": 422}),
     ProviderRejected, False),
    (raw(402, {"title": "Insufficient credit", "detail": "You have insufficient credit", "status": 402}),
     ProviderRejected, True),
], ids=["html-5xx", "500", "401", "422", "402"])
def test_errors_are_classified(response, kind, fixable):
    with pytest.raises(kind) as raised:
        ADAPTER.parse_submit(response, now_ms=NOW_MS)
    assert raised.value.status == response.status
    assert another_provider_could_fix(raised.value) is fixable


# Cancel


@pytest.mark.anyio
async def test_cancel_posts_to_the_predictions_cancel_url(router, client):
    route = router.post(f"{BASE}/v1/predictions/p-1/cancel").mock(
        return_value=httpx.Response(200, json=prediction(status="canceled")))
    call = ADAPTER.cancel_call("p-1")
    assert call is not None
    answer = await send(client, call, timeout=5)
    assert route.calls.last.request.headers["authorization"] == f"Bearer {TOKEN}"
    assert ADAPTER.parse_cancel(answer, now_ms=NOW_MS) is True


@pytest.mark.parametrize(("status", "cancelled"), [
    ("canceled", True), ("processing", True), ("starting", True),
    ("succeeded", False), ("failed", False), ("aborted", False),
])
def test_cancel_is_refused_only_for_a_finished_prediction(status, cancelled):
    assert ADAPTER.parse_cancel(raw(200, prediction(status=status)), now_ms=NOW_MS) is cancelled


def test_cancelling_an_unknown_prediction_is_an_error():
    with pytest.raises(ProviderRejected):
        ADAPTER.parse_cancel(raw(404, {"detail": "not found"}), now_ms=NOW_MS)


# The account's signing secret


def test_the_secret_is_fetched_with_the_token_and_decoded():
    call = ADAPTER.keys_call()
    assert (call.method, call.url) == ("GET", f"{BASE}/v1/webhooks/default/secret")
    assert call.headers["Authorization"] == f"Bearer {TOKEN}"
    keys = ADAPTER.parse_keys(raw(200, {"key": SECRET}), now_ms=NOW_MS)
    assert keys == CallbackKeys((decode_secret(SECRET),))
    assert ADAPTER.configured_keys() is None


@pytest.mark.parametrize("body", [{"key": "not-a-secret"}, {"nokey": True}, {"key": "whsec_!!!"}])
def test_an_answer_without_a_secret_is_refused_without_quoting_it(body):
    with pytest.raises(ProviderRejected) as refused:
        ADAPTER.parse_keys(raw(200, body), now_ms=NOW_MS)
    assert "not-a-secret" not in refused.value.message and "!!!" not in refused.value.message


def test_a_configured_secret_is_used_instead_of_fetching():
    adapter = ReplicateAdapter(BASE, TOKEN, (), webhook_secret=SECRET)
    assert adapter.configured_keys() == CallbackKeys((decode_secret(SECRET),))


# Standard Webhooks verification


SPEC_ID, SPEC_TS, SPEC_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="  # the spec's known answer
KEYS = CallbackKeys((decode_secret(SECRET),))


def spec_headers(**override: str) -> dict[str, str]:
    return {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS),
            "webhook-signature": SPEC_SIGNATURE, **override}


def test_the_spec_vector_verifies_and_the_simulator_signs_it_the_same():
    assert standard_webhook_signature(SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE
    ADAPTER.verify_signed(spec_headers(), SPEC_BODY, KEYS, now_ms=SPEC_TS * 1000)


def test_any_one_of_several_signatures_is_enough_and_other_versions_are_skipped():
    header = f"v1a,c29tZXRoaW5n v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= {SPEC_SIGNATURE}"
    ADAPTER.verify_signed(spec_headers(**{"webhook-signature": header}), SPEC_BODY, KEYS,
                          now_ms=SPEC_TS * 1000)


def test_headers_are_found_whatever_their_case():
    headers = {k.title(): v for k, v in spec_headers().items()}
    ADAPTER.verify_signed(headers, SPEC_BODY, KEYS, now_ms=SPEC_TS * 1000)


@pytest.mark.parametrize(("headers", "body", "skew_s", "code"), [
    ({"webhook-signature": ""}, SPEC_BODY, 0, "missing_signature"),
    ({"webhook-id": ""}, SPEC_BODY, 0, "missing_signature"),
    ({"webhook-timestamp": "yesterday"}, SPEC_BODY, 0, "malformed_signature"),
    ({"webhook-signature": "garbage"}, SPEC_BODY, 0, "malformed_signature"),
    ({}, SPEC_BODY, -360, "stale_timestamp"),  # the callback is 6 minutes old
    ({}, SPEC_BODY, 360, "stale_timestamp"),  # 6 minutes ahead
    ({}, SPEC_BODY.replace(b"4", b"5", 1), 0, "unknown_key"),  # one byte changed
    ({"webhook-id": "msg_other"}, SPEC_BODY, 0, "unknown_key"),
    ({"webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="}, SPEC_BODY, 0, "unknown_key"),
], ids=["no-signature", "no-id", "bad-timestamp", "garbage-signature", "6-min-old", "6-min-ahead",
        "body-changed", "other-id", "wrong-signature"])
def test_anything_but_a_fresh_valid_signature_is_refused(headers, body, skew_s, code):
    with pytest.raises(CallbackRejected) as refused:
        # The callback says SPEC_TS; fluxhook's clock reads SPEC_TS - skew_s.
        ADAPTER.verify_signed(spec_headers(**headers), body, KEYS, now_ms=(SPEC_TS - skew_s) * 1000)
    assert (refused.value.status_code, refused.value.code) == (401, code)


def test_missing_headers_are_refused():
    with pytest.raises(CallbackRejected) as refused:
        ADAPTER.verify_signed({}, SPEC_BODY, KEYS, now_ms=SPEC_TS * 1000)
    assert refused.value.code == "missing_signature"


def test_a_timestamp_just_inside_five_minutes_is_accepted():
    for skew in (-300, 300):
        ADAPTER.verify_signed(spec_headers(), SPEC_BODY, KEYS, now_ms=(SPEC_TS + skew) * 1000)


def test_replicate_callbacks_are_verified_only_with_the_accounts_keys_never_a_jobs_secret():
    assert isinstance(ADAPTER, AccountSigned)
    assert not isinstance(ADAPTER, JobSigned)  # no per-job check that could let one in


# Settings and catalog


def test_settings_configure_replicate_with_its_own_secret():
    settings = Settings.parse({"REPLICATE_API_TOKEN": TOKEN, "REPLICATE_WEBHOOK_SECRET": SECRET,
                               "FLUXHOOK_SECRET_KEY": "k", "FLUXHOOK_SIMULATOR": "off"})
    replicate = settings.providers["replicate"]
    assert (replicate.base_url, replicate.signing_secret) == (BASE, SECRET)
    assert replicate.output_hosts == ("replicate.delivery", "*.replicate.delivery", "api.replicate.com")
    assert SECRET not in repr(replicate) and TOKEN not in repr(replicate)
    with pytest.raises(ConfigError, match="REPLICATE_WEBHOOK_SECRET"):
        Settings.parse({"REPLICATE_API_TOKEN": TOKEN, "REPLICATE_WEBHOOK_SECRET": "hunter2"})


def test_the_simulator_serves_replicate_when_no_key_is_set():
    settings = Settings.parse({"FLUXHOOK_PUBLIC_URL": "http://127.0.0.1:9000", "FLUXHOOK_SECRET_KEY": "k"})
    replicate = settings.providers["replicate"]
    assert replicate.simulated and replicate.base_url == "http://127.0.0.1:9000/simulator"
    assert settings.provider_order[-2:] == ("replicate", "fal")


CATALOG = Catalog.default()


@pytest.mark.parametrize(("native", "unified"), [
    ("black-forest-labs/flux-1.1-pro", "flux-pro-1.1"),
    ("black-forest-labs/flux-1.1-pro-ultra", "flux-pro-1.1-ultra"),
    ("black-forest-labs/flux-dev", "flux-dev"),
    ("black-forest-labs/flux-schnell", "flux-schnell"),
    ("black-forest-labs/flux-kontext-pro", "flux-kontext-pro"),
    ("black-forest-labs/flux-2-pro", "flux-2-pro"),
])
def test_native_ids_name_the_unified_models_other_providers_serve_too(native, unified):
    model = CATALOG.find("replicate", native)
    assert model is not None and model.name == unified
    assert CATALOG.find("replicate", unified) is model
    assert model.capabilities == {"webhook": True, "cancel": True,
                                  "image_input": model.capabilities["image_input"]}
    if unified != "flux-schnell":  # BFL's API does not serve [schnell]
        assert len(CATALOG.serving(native)) > 1  # so "auto" can fail over


@pytest.mark.parametrize(("model", "value", "field"), [
    ("flux-pro-1.1", {"prompt": "x", "safety_tolerance": 0}, "input.safety_tolerance"),  # 1-6 here
    ("flux-pro-1.1", {"prompt": "x", "width": 1472}, "input.width"),
    ("flux-schnell", {"prompt": "x", "steps": 5}, "input.steps"),
    ("flux-pro-1.1-ultra", {"prompt": "x", "aspect_ratio": "7:3"}, "input.aspect_ratio"),
    ("flux-kontext-pro", {"prompt": "x", "output_format": "webp"}, "input.output_format"),
])
def test_replicates_own_ranges_are_enforced(model, value, field):
    from service.errors import ValidationFailed

    found = CATALOG.find("replicate", model)
    assert found is not None
    with pytest.raises(ValidationFailed) as refused:
        validate_input(found, value)
    assert [d["field"] for d in refused.value.details] == [field]
