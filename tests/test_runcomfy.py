"""The RunComfy adapter: the exact model request, result polling, errors and cancel (respx)."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import respx

from service.errors import CallbackRejected, ProviderRejected, ProviderRetryable
from service.providers.base import Accepted, ProviderState, RawResponse, SubmitOrder
from service.providers.runcomfy import RunComfyAdapter
from service.providers.transport import send
from service.simulator import SimulatorConfig, create_simulator_app

BASE = "https://model-api.runcomfy.net"
KEY = "rc-test-token"
ADAPTER = RunComfyAdapter(BASE, KEY, ("*.runcomfy.net", "*.runcomfy.com"))
MODEL = "blackforestlabs/flux-1-kontext/pro/edit"
IMAGE = "https://img.example.com/in.png"


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


def urls(request_id: str, base: str = BASE) -> dict[str, str]:
    root = f"{base}/v1/requests/{request_id}"
    return {"status_url": f"{root}/status", "result_url": f"{root}/result", "cancel_url": f"{root}/cancel"}


def test_adapter_identity_and_key_stays_out_of_repr():
    assert (ADAPTER.name, ADAPTER.supports_webhooks) == ("runcomfy", False)
    assert ADAPTER.output_hosts == ("*.runcomfy.net", "*.runcomfy.com")
    assert KEY not in repr(ADAPTER)


@pytest.mark.anyio
async def test_submit_posts_the_unified_input_to_the_model_path_with_bearer_auth(router, client):
    route = router.post(f"{BASE}/v1/models/{MODEL}").mock(
        return_value=httpx.Response(200, json={"request_id": "r-1", **urls("r-1")}))
    order = SubmitOrder("job-1", MODEL, {"prompt": "make it snow", "image_url": IMAGE, "seed": 4,
                                         "aspect_ratio": "1:1", "output_format": None},
                        "https://hooks.example.com/cb", "whsec")

    answer = await send(client, ADAPTER.submit_call(order), timeout=5)

    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.raw_path == b"/v1/models/blackforestlabs/flux-1-kontext/pro/edit"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    # 1:1 keys, unset ones left out, and no webhook: the Model API documents none (§d.3).
    assert json.loads(request.content) == {"prompt": "make it snow", "image_url": IMAGE, "seed": 4,
                                           "aspect_ratio": "1:1"}
    assert ADAPTER.parse_submit(answer, now_ms=0) == Accepted("r-1", f"{BASE}/v1/requests/r-1/result")


def test_a_submit_answer_without_a_result_url_still_polls_the_result_endpoint():
    accepted = ADAPTER.parse_submit(raw(200, {"request_id": "r-2"}), now_ms=0)
    assert accepted == Accepted("r-2", None)
    assert ADAPTER.status_call("r-2", None).url == f"{BASE}/v1/requests/r-2/result"


@pytest.mark.parametrize("answer", [raw(200, {"status": "in_queue"}), raw(200, text="<html>ok</html>")],
                         ids=["no-request-id", "html"])
def test_a_2xx_submit_answer_without_a_request_id_fails_loudly(answer):
    with pytest.raises(ProviderRejected, match="request_id"):
        ADAPTER.parse_submit(answer, now_ms=0)


@pytest.mark.parametrize(("polling_url", "expected"), [
    (None, f"{BASE}/v1/requests/r%2F1/result"),
    (f"{BASE}/v1/requests/r-9/result", f"{BASE}/v1/requests/r-9/result"),
    ("https://eu.runcomfy.net/v1/requests/r-9/result", "https://eu.runcomfy.net/v1/requests/r-9/result"),
    ("http://eu.runcomfy.net/v1/requests/r-9/result", f"{BASE}/v1/requests/r%2F1/result"),
    ("https://evil.example.net/v1/requests/r-9/result", f"{BASE}/v1/requests/r%2F1/result"),
    ("https://runcomfy.net.evil.example/v1/requests/r-9/result", f"{BASE}/v1/requests/r%2F1/result"),
    ("https://notruncomfy.net/v1/requests/r-9/result", f"{BASE}/v1/requests/r%2F1/result"),
], ids=["none", "base-host", "runcomfy-subdomain", "plain-http", "foreign-host", "lookalike-prefix",
        "lookalike-suffix"])
def test_result_url_receives_the_token_only_on_runcomfy_hosts(polling_url, expected):
    call = ADAPTER.status_call("r/1", polling_url)
    assert (call.method, call.url) == ("GET", expected)
    assert call.headers["Authorization"] == f"Bearer {KEY}"


def test_the_simulators_result_url_on_the_base_host_is_followed():
    local = RunComfyAdapter("http://127.0.0.1:8000/simulator", KEY, ())
    url = "http://127.0.0.1:8000/simulator/v1/requests/r/result"
    assert local.status_call("r", url).url == url
    assert local.status_call("r", "http://127.0.0.1:9999/v1/requests/r/result").url == url


OUT = "https://cdn.runcomfy.net/out/r-1.png"
STATUS_CASES = [
    ("in_queue", {"status": "in_queue", "queue_position": 2}, ProviderState.PENDING, ()),
    ("in_progress", {"status": "in_progress"}, ProviderState.RUNNING, ()),
    ("completed-image", {"status": "completed", "output": {"image": OUT}}, ProviderState.READY, (OUT,)),
    ("completed-images", {"status": "completed", "output": {"images": [OUT, OUT + "?2"]}},
     ProviderState.READY, (OUT, OUT + "?2")),
    ("completed-bare-uri", {"status": "completed", "output": OUT}, ProviderState.READY, (OUT,)),
    ("completed-no-output", {"status": "completed", "output": {}}, ProviderState.FAILED, ()),
    ("cancelled", {"status": "cancelled"}, ProviderState.CANCELLED, ()),
    ("failed", {"status": "failed", "error": {"type": "GenerationError", "message": "boom"}},
     ProviderState.FAILED, ()),
    ("error", {"status": "error"}, ProviderState.FAILED, ()),
    ("errored", {"status": "errored", "error": "out of memory"}, ProviderState.FAILED, ()),
    ("error-object-only", {"status": "in_progress", "error": {"message": "worker died"}},
     ProviderState.FAILED, ()),
    ("unknown", {"status": "warming_up"}, ProviderState.PENDING, ()),
    ("no-status", {}, ProviderState.PENDING, ()),
]


@pytest.mark.parametrize(("body", "state", "outputs"), [c[1:] for c in STATUS_CASES],
                         ids=[c[0] for c in STATUS_CASES])
def test_every_runcomfy_status_is_mapped(body, state, outputs):
    report = ADAPTER.parse_status(raw(200, {"request_id": "r-1", **body}), now_ms=0)
    assert (report.state, report.output_urls, report.provider_job_id) == (state, outputs, "r-1")


def test_a_failure_carries_runcomfys_reason():
    report = ADAPTER.parse_status(raw(200, {"request_id": "r", "status": "failed", "error": {
        "type": "ContentModerationError", "message": "content flagged"}}), now_ms=0)
    assert report.message == "failed: ContentModerationError: content flagged"


@pytest.mark.parametrize("response", [
    raw(404, {"error_code": 404001, "message": "ResourceNotFound"}),
    raw(404, text="<html><h1>Not Found</h1></html>"),
], ids=["404001", "html"])
def test_an_unknown_or_expired_request_is_not_found(response):
    assert ADAPTER.parse_status(response, now_ms=0).state is ProviderState.NOT_FOUND


ERROR_CASES = [
    ("401", raw(401, {"error_code": 401001, "message": "Unauthorized"}), ProviderRejected),
    ("403", raw(403, {"error_code": 403001, "message": "PermissionDeniedError"}), ProviderRejected),
    ("422", raw(422, {"error_code": 422001, "message": "image_url is required"}), ProviderRejected),
    ("400", raw(400, {"error_code": 400001, "message": "InvalidResourceIdentifier"}), ProviderRejected),
    ("429", raw(429, {"error_code": 429001, "message": "TooManyRequests"}, **{"retry-after": "3"}),
     ProviderRetryable),
    ("500", raw(500, {"error_code": 500001, "message": "internal"}), ProviderRetryable),
    ("502-html", raw(502, text="<html><body>502 Bad Gateway</body></html>"), ProviderRetryable),
    ("503-plain", raw(503, text="upstream connect error"), ProviderRetryable),
]


@pytest.mark.parametrize(("response", "error"), [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
@pytest.mark.parametrize("stage", ["submit", "status"])
def test_errors_are_classified(stage, response, error):
    parse = ADAPTER.parse_submit if stage == "submit" else ADAPTER.parse_status
    with pytest.raises(error) as caught:
        parse(response, now_ms=0)
    assert caught.value.status == response.status
    assert f"HTTP {response.status}" in caught.value.message


@pytest.mark.parametrize("response", [
    raw(400, {"error_code": 400002, "message": "InsufficientResources"}),
    raw(400, {"error_code": "400002", "message": "no remaining balance"}),
    raw(400, {"message": "InsufficientResources"}),
], ids=["documented", "code-as-text", "name-only"])
def test_an_empty_balance_is_permanent_and_named(response):
    with pytest.raises(ProviderRejected) as caught:
        ADAPTER.parse_submit(response, now_ms=0)
    assert "insufficient" in caught.value.message
    assert "400002" in caught.value.message


def test_retry_after_is_read_from_a_429():
    with pytest.raises(ProviderRetryable) as caught:
        ADAPTER.parse_status(raw(429, {"error_code": 429001}, **{"retry-after": "12"}), now_ms=0)
    assert caught.value.retry_after == 12


def test_a_2xx_result_that_is_not_json_is_an_error_not_a_crash():
    with pytest.raises(ProviderRejected):
        ADAPTER.parse_status(raw(200, text="<html>maintenance</html>"), now_ms=0)


def test_runcomfy_sends_no_callbacks_so_any_callback_is_refused():
    for attempt in (lambda: ADAPTER.verify_callback({}, b"{}", "s"), lambda: ADAPTER.parse_callback(b"{}")):
        with pytest.raises(CallbackRejected) as caught:
            attempt()
        assert (caught.value.status_code, caught.value.code) == (404, "no_callbacks")


def test_cancel_posts_to_the_request_with_bearer_auth():
    call = ADAPTER.cancel_call("r/1")
    assert call is not None
    assert (call.method, call.url, call.json) == ("POST", f"{BASE}/v1/requests/r%2F1/cancel", None)
    assert call.headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(("response", "cancelled"), [
    (raw(200, {"request_id": "r", "status": "cancelled"}), True),
    (raw(202, text=""), True),
    (raw(409, {"error_code": 409001, "message": "request is in_progress, not in_queue"}), False),
    (raw(400, {"message": "request already completed"}), False),
], ids=["200-cancelled", "202-empty", "409-running", "400-finished"])
def test_cancel_answers_are_read(response, cancelled):
    assert ADAPTER.parse_cancel(response, now_ms=0) is cancelled


@pytest.mark.parametrize(("response", "error"), [
    (raw(429, {}, **{"retry-after": "2"}), ProviderRetryable),
    (raw(503, text="<html>down</html>"), ProviderRetryable),
    (raw(401, {"error_code": 401001}), ProviderRejected),
    (raw(404, {"error_code": 404001}), ProviderRejected),
], ids=["429", "503", "401", "404"])
def test_cancel_failures_raise(response, error):
    with pytest.raises(error):
        ADAPTER.parse_cancel(response, now_ms=0)


@pytest.mark.anyio
async def test_cancel_goes_over_the_wire(router, client):
    route = router.post(f"{BASE}/v1/requests/r-1/cancel").mock(side_effect=[
        httpx.Response(200, json={"request_id": "r-1", "status": "cancelled"}),
        httpx.Response(409, json={"error_code": 409001, "message": "running"}),
    ])
    call = ADAPTER.cancel_call("r-1")
    assert call is not None
    assert ADAPTER.parse_cancel(await send(client, call, timeout=5), now_ms=0) is True
    assert ADAPTER.parse_cancel(await send(client, call, timeout=5), now_ms=0) is False
    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"


class SimClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def simulator(config: SimulatorConfig) -> AsyncIterator[tuple[httpx.AsyncClient, SimClock]]:
    clock = SimClock()
    app = create_simulator_app(config, rand=random.Random(11), clock=clock)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app)) as client:
        yield client, clock


@pytest.mark.anyio
@pytest.mark.parametrize("shape", ["image", "images"])
async def test_a_request_round_trips_through_the_simulator(shape):
    adapter = RunComfyAdapter("http://sim.test", KEY, ("sim.test",))
    # 10 s latency: in_queue for the first 4 s, in_progress until 10 s.
    async with simulator(SimulatorConfig(latency_s=(10.0, 10.0), runcomfy_result_shape=shape)) as (
            client, clock):

        async def poll(accepted: Accepted) -> ProviderState:
            call = adapter.status_call(accepted.provider_job_id, accepted.polling_url)
            return adapter.parse_status(await send(client, call, timeout=5), now_ms=0).state

        async def submit() -> Accepted:
            order = SubmitOrder("j", MODEL, {"prompt": "snow", "image_url": IMAGE, "aspect_ratio": None},
                                None, None)
            return adapter.parse_submit(await send(client, adapter.submit_call(order), timeout=5),
                                        now_ms=0)

        async def cancel(accepted: Accepted) -> bool:
            call = adapter.cancel_call(accepted.provider_job_id)
            assert call is not None
            return adapter.parse_cancel(await send(client, call, timeout=5), now_ms=0)

        kept, dropped = await submit(), await submit()
        assert kept.polling_url == f"http://sim.test/v1/requests/{kept.provider_job_id}/result"
        assert await poll(kept) is ProviderState.PENDING
        assert await cancel(dropped) is True
        assert await poll(dropped) is ProviderState.CANCELLED
        clock.now += 5
        assert await poll(kept) is ProviderState.RUNNING
        assert await cancel(kept) is False  # running requests cannot be cancelled
        clock.now += 10
        call = adapter.status_call(kept.provider_job_id, kept.polling_url)
        done = adapter.parse_status(await send(client, call, timeout=5), now_ms=0)

    assert done.state is ProviderState.READY
    assert done.output_urls == (f"http://sim.test/delivery/{kept.provider_job_id}/sample.jpeg",)
