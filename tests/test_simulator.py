"""The embedded provider simulator, driven over real loopback HTTP like fluxhook drives it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from service.loopback import serve
from service.simulator import SimulatorConfig, create_simulator_app
from service.simulator.callbacks import apiframe_signature, bfl_signature
from service.simulator.config import KnobError
from service.simulator.images import render_image

pytestmark = pytest.mark.anyio

FAST = SimulatorConfig(latency_s=(0.05, 0.1), callback_retry_delays_s=(0.05, 0.05))
BFL_KEY = {"x-key": "bfl-test-key"}


# ---------------------------------------------------------------------------- helpers


# Run an ASGI app under uvicorn on a free loopback port; yields its base URL.
serving = serve


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Receiver:
    """A webhook endpoint that records raw bodies and headers and answers scripted statuses."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses)
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        self.calls.append((dict(request.headers), await request.body()))
        return Response(status_code=self.statuses.pop(0) if self.statuses else 204)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait until the async check passes, failing the test after `timeout` seconds."""
    with anyio.fail_after(timeout):
        while True:
            if await check():
                return
            await anyio.sleep(0.01)


@pytest.fixture
def simulator() -> Callable[..., Any]:
    """Factory: `async with simulator(config) as (client, sim)` runs one under uvicorn."""

    @asynccontextmanager
    async def start(
        config: SimulatorConfig = FAST, *, seed: int = 7, clock: FakeClock | None = None
    ) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
        app = create_simulator_app(config, rand=random.Random(seed), clock=clock)
        async with serving(app) as base, httpx.AsyncClient(base_url=base, trust_env=False) as client:
            yield client, app.state.simulator

    return start


@pytest.fixture
def receiver() -> Callable[..., Any]:
    """Factory: `async with receiver(statuses) as (url, rec)` runs a Receiver under uvicorn."""

    @asynccontextmanager
    async def start(statuses: tuple[int, ...] = ()) -> AsyncIterator[tuple[str, Receiver]]:
        rec = Receiver(statuses)
        async with serving(rec.app) as base:
            yield f"{base}/hook", rec

    return start


async def poll_until_terminal(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> dict[str, Any]:
    """Poll a BFL-style polling URL until the status is no longer Pending."""
    result: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal result
        result = (await client.get(url, headers=headers)).json()
        return result["status"] != "Pending"

    await eventually(done)
    return result


async def record(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    """The simulator's inspection record of one task."""
    response = await client.get(f"/_sim/tasks/{task_id}")
    assert response.status_code == 200
    return response.json()


# ---------------------------------------------------------------------------- BFL


async def test_bfl_task_becomes_ready_and_serves_the_recorded_image(simulator: Any) -> None:
    async with simulator() as (client, sim):
        submitted = await client.post(
            "/v1/flux-pro-1.1",
            headers=BFL_KEY,
            json={
                "prompt": "a lighthouse at dusk",
                "width": 512,
                "height": 256,
                "output_format": "png",
                "seed": 42,
                "unknown_field": "ignored",
            },
        )
        assert submitted.status_code == 200
        body = submitted.json()
        base = str(client.base_url).rstrip("/")
        assert body["polling_url"] == f"{base}/v1/get_result?id={body['id']}"

        result = await poll_until_terminal(client, body["polling_url"], BFL_KEY)
        assert result["status"] == "Ready"
        assert set(result) == {"id", "status", "result", "progress", "details", "preview"}
        assert result["result"]["seed"] == 42
        assert result["result"]["prompt"] == "a lighthouse at dusk"

        image = await client.get(result["result"]["sample"])
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"
        task = await record(client, body["id"])
        assert task["sha256s"] == [hashlib.sha256(image.content).hexdigest()]
        assert task["protocol"] == "bfl" and task["status"] == "Ready"
        assert task["poll_count"] >= 2
        with Image.open(io.BytesIO(image.content)) as picture:
            assert picture.size == (512, 256) and picture.format == "PNG"
        again = await client.get(result["result"]["sample"])
        assert again.content == image.content
        assert sim.tasks[body["id"]].download_count == 2


async def test_bfl_rejects_a_width_that_is_not_a_multiple_of_32(simulator: Any) -> None:
    async with simulator() as (client, sim):
        response = await client.post("/v1/flux-dev", headers=BFL_KEY, json={"prompt": "x", "width": 1000})
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", "width"] and error["type"] and error["msg"]
        missing = await client.post("/v1/flux-dev", headers=BFL_KEY, json={"width": 512})
        assert missing.json()["detail"][0]["loc"] == ["body", "prompt"]
        assert sim.tasks == {}


async def test_bfl_unknown_id_is_task_not_found(simulator: Any) -> None:
    async with simulator() as (client, _):
        response = await client.get("/v1/get_result", params={"id": "nope"}, headers=BFL_KEY)
        assert response.status_code == 200
        assert response.json()["status"] == "Task not found"


async def test_bfl_missing_key_is_401_and_a_wrong_key_is_403(simulator: Any) -> None:
    async with simulator(SimulatorConfig(api_key="right")) as (client, _):
        missing = await client.post("/v1/flux-dev", json={"prompt": "x"})
        assert missing.status_code == 401 and missing.json() == {"detail": "Not authenticated"}
        wrong = await client.post("/v1/flux-dev", json={"prompt": "x"}, headers={"x-key": "no"})
        assert wrong.status_code == 403
        right = await client.post("/v1/flux-dev", json={"prompt": "x"}, headers={"x-key": "right"})
        assert right.status_code == 200


async def test_insufficient_credits_is_402_for_bfl(simulator: Any) -> None:
    async with simulator(SimulatorConfig(insufficient_credits=True)) as (client, _):
        response = await client.post("/v1/flux-dev", headers=BFL_KEY, json={"prompt": "x"})
        assert response.status_code == 402


async def test_injected_429_carries_retry_after(simulator: Any) -> None:
    config = SimulatorConfig(submit_429_rate=1.0, retry_after_s=3)
    async with simulator(config) as (client, sim):
        response = await client.post("/v1/flux-dev", headers=BFL_KEY, json={"prompt": "x"})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"
        assert sim.tasks == {}


async def test_injected_poll_503s_are_sometimes_html_like_a_proxy(simulator: Any) -> None:
    async with simulator(SimulatorConfig(poll_5xx_rate=1.0)) as (client, sim):
        submitted = (await client.post("/v1/flux-dev", headers=BFL_KEY, json={"prompt": "x"})).json()
        kinds = set()
        for _ in range(12):
            response = await client.get(submitted["polling_url"], headers=BFL_KEY)
            assert response.status_code == 503
            kinds.add(response.headers["content-type"].split(";")[0])
        assert kinds == {"text/html", "application/json"}
        assert sim.tasks[submitted["id"]].poll_count == 0  # refused polls are not answered


async def test_delivery_url_is_404_once_the_ttl_has_passed(simulator: Any) -> None:
    clock = FakeClock()
    config = SimulatorConfig(latency_s=(1.0, 1.0), delivery_url_ttl_s=600.0)
    async with simulator(config, clock=clock) as (client, _):
        submitted = (
            await client.post(
                "/v1/flux-dev", headers=BFL_KEY, json={"prompt": "x", "width": 256, "height": 256}
            )
        ).json()
        clock.now += 1.0
        sample = (await client.get(submitted["polling_url"], headers=BFL_KEY)).json()
        url = sample["result"]["sample"]
        clock.now += 599.0
        assert (await client.get(url)).status_code == 200
        clock.now += 2.0
        assert (await client.get(url)).status_code == 404


async def test_image_is_404_before_the_task_is_ready(simulator: Any) -> None:
    clock = FakeClock()
    async with simulator(SimulatorConfig(latency_s=(1.0, 1.0)), clock=clock) as (client, _):
        submitted = (await client.post("/v1/flux-dev", headers=BFL_KEY, json={"prompt": "x"})).json()
        response = await client.get(f"/delivery/{submitted['id']}/sample.jpeg")
        assert response.status_code == 404


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (SimulatorConfig(latency_s=(0.0, 0.0), failure_rate=1.0), {"Error"}),
        (
            SimulatorConfig(latency_s=(0.0, 0.0), moderation_rate=1.0),
            {"Request Moderated", "Content Moderated"},
        ),
    ],
    ids=["failure", "moderation"],
)
async def test_failure_knobs_end_tasks_in_bfl_failure_states(
    simulator: Any, config: Any, expected: set[str]
) -> None:
    async with simulator(config) as (client, _):
        seen = set()
        for _ in range(8):
            submitted = (await client.post("/v1/flux-dev", headers=BFL_KEY, json={"prompt": "x"})).json()
            result = await poll_until_terminal(client, submitted["polling_url"], BFL_KEY)
            assert result["result"] is None
            seen.add(result["status"])
        assert seen == expected


async def test_signed_bfl_callback_reaches_a_real_receiver(simulator: Any, receiver: Any) -> None:
    async with receiver() as (hook_url, rec), simulator() as (client, _):
        submitted = (
            await client.post(
                "/v1/flux-pro-1.1",
                headers=BFL_KEY,
                json={"prompt": "x", "webhook_url": hook_url, "webhook_secret": "s3cret"},
            )
        ).json()
        assert "polling_url" in submitted

        async def acknowledged() -> bool:
            return (await record(client, submitted["id"]))["callbacks_acknowledged"] == 1

        await eventually(acknowledged)
        [(headers, body)] = rec.calls
        expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert headers["x-bfl-signature"] == f"sha256={expected}"
        assert headers["content-type"] == "application/json"
        payload = json.loads(body)
        assert payload["id"] == submitted["id"] and payload["status"] == "Ready"
        assert payload["result"]["sample"].endswith(f"/delivery/{submitted['id']}/sample.jpeg")
        assert payload["timestamp"].endswith("Z")
        task = await record(client, submitted["id"])
        assert task["webhook_url"] == hook_url and "s3cret" not in json.dumps(task)
        assert task["callback_attempts"] == 1


async def test_callback_is_retried_with_identical_bytes_after_a_failure(
    simulator: Any, receiver: Any
) -> None:
    async with receiver(statuses=(500, 302)) as (hook_url, rec), simulator() as (client, _):
        submitted = (
            await client.post(
                "/v1/flux-dev",
                headers=BFL_KEY,
                json={"prompt": "x", "webhook_url": hook_url, "webhook_secret": "k"},
            )
        ).json()

        async def acknowledged() -> bool:
            return (await record(client, submitted["id"]))["callbacks_acknowledged"] == 1

        await eventually(acknowledged)
        assert len(rec.calls) == 3  # 500 and a redirect are both failures
        assert len({body for _, body in rec.calls}) == 1
        assert len({headers["x-bfl-signature"] for headers, _ in rec.calls}) == 1
        task = await record(client, submitted["id"])
        assert task["callback_attempts"] == 3


async def test_callback_gives_up_after_the_retry_schedule(simulator: Any, receiver: Any) -> None:
    async with receiver(statuses=(500,) * 5) as (hook_url, rec), simulator() as (client, sim):
        submitted = (
            await client.post("/v1/flux-dev", headers=BFL_KEY, json={"prompt": "x", "webhook_url": hook_url})
        ).json()

        async def attempted() -> bool:
            return (await record(client, submitted["id"]))["callback_attempts"] == 3

        await eventually(attempted)
        await anyio.sleep(0.2)  # longer than any remaining retry delay would be
        assert len(rec.calls) == 3
        assert sim.tasks[submitted["id"]].callbacks_acknowledged == 0


async def test_callback_knobs_drop_duplicate_and_unsign(simulator: Any, receiver: Any) -> None:
    async with receiver() as (hook_url, rec), simulator() as (client, _):
        hook = {"prompt": "x", "webhook_url": hook_url, "webhook_secret": "k"}
        dropped = await client.patch("/_sim/config", json={"callback_drop_rate": 1.0})
        assert dropped.status_code == 200
        lost = (await client.post("/v1/flux-dev", headers=BFL_KEY, json=hook)).json()

        async def gave_up() -> bool:
            return (await record(client, lost["id"]))["callback_dropped"]

        await eventually(gave_up)
        assert rec.calls == []

        await client.patch(
            "/_sim/config",
            json={"callback_drop_rate": 0.0, "callback_duplicate_rate": 1.0, "unsigned_callback_rate": 1.0},
        )
        twice = (await client.post("/v1/flux-dev", headers=BFL_KEY, json=hook)).json()

        async def both_acknowledged() -> bool:
            return (await record(client, twice["id"]))["callbacks_acknowledged"] == 2

        await eventually(both_acknowledged)
        [first, second] = rec.calls
        assert first[1] == second[1] and json.loads(first[1])["id"] == twice["id"]
        assert "x-bfl-signature" not in first[0] and "x-bfl-signature" not in second[0]


async def test_webhook_only_variant_omits_polling_url(simulator: Any) -> None:
    config = SimulatorConfig(include_polling_url_with_webhook=False)
    async with simulator(config) as (client, _):
        response = await client.post(
            "/v1/flux-dev", headers=BFL_KEY, json={"prompt": "x", "webhook_url": "http://127.0.0.1:9/hook"}
        )
        body = response.json()
        assert "polling_url" not in body
        assert body["status"] == "Pending" and body["webhook_url"] == "http://127.0.0.1:9/hook"
        plain = (await client.post("/v1/flux-dev", headers=BFL_KEY, json={"prompt": "x"})).json()
        assert "polling_url" in plain


# ---------------------------------------------------------------------------- CometAPI


async def test_cometapi_speaks_bfl_under_flux_v1_with_bearer_auth(simulator: Any) -> None:
    bearer = {"Authorization": "Bearer comet-key"}
    async with simulator() as (client, _):
        refused = await client.post("/flux/v1/flux-dev", json={"prompt": "x"})
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "comet_api_error"
        submitted = (await client.post("/flux/v1/flux-dev", headers=bearer, json={"prompt": "x"})).json()
        assert "/flux/v1/get_result?id=" in submitted["polling_url"]
        result = await poll_until_terminal(client, submitted["polling_url"], bearer)
        assert result["status"] == "Ready"
        # Each provider has its own task namespace.
        bfl = await client.get("/v1/get_result", params={"id": submitted["id"]}, headers=BFL_KEY)
        assert bfl.json()["status"] == "Task not found"


# ---------------------------------------------------------------------------- Apiframe


async def test_apiframe_idempotency_key_returns_the_same_job(simulator: Any) -> None:
    headers = {"X-API-Key": "afk_test", "Idempotency-Key": "order-17"}
    body = {"prompt": "a red kite", "model": "flux-1.1-pro", "fluxParams": {"seed": 3}}
    async with simulator() as (client, sim):
        first = await client.post("/v2/images/generate", headers=headers, json=body)
        second = await client.post("/v2/images/generate", headers=headers, json=body)
        assert first.status_code == second.status_code == 202
        assert first.json()["jobId"] == second.json()["jobId"]
        assert first.json()["status"] == "QUEUED"
        assert len(sim.tasks) == 1
        changed = await client.post(
            "/v2/images/generate", headers=headers, json={**body, "prompt": "a blue kite"}
        )
        assert changed.status_code == 409
        other = await client.post(
            "/v2/images/generate", json=body, headers={**headers, "Idempotency-Key": "order-18"}
        )
        assert other.json()["jobId"] != first.json()["jobId"]


async def test_apiframe_webhooks_are_signed_with_the_api_key(simulator: Any, receiver: Any) -> None:
    config = SimulatorConfig(latency_s=(0.1, 0.1))
    async with receiver() as (hook_url, rec), simulator(config) as (client, _):
        # Every reading of Apiframe's ambiguous signing docs, one job each.
        for key_form, encoding in [("hex", "hex"), ("hex", "base64"), ("raw", "hex"), ("raw", "base64")]:
            rec.calls.clear()
            await client.patch(
                "/_sim/config",
                json={"apiframe_signature_key": key_form, "apiframe_signature_encoding": encoding},
            )
            submitted = (
                await client.post(
                    "/v2/images/generate",
                    headers={"X-API-Key": "afk_abc"},
                    json={
                        "prompt": "x",
                        "model": "flux-2-dev",
                        "fluxParams": {"output_format": "png"},
                        "webhookUrl": hook_url,
                        "webhookEvents": ["progress", "completed"],
                    },
                )
            ).json()

            async def all_three_arrived() -> bool:
                return len(rec.calls) == 3

            await eventually(all_three_arrived)
            # Progress and completion travel separately and may overtake each other.
            events = sorted(h["x-webhook-event"] for h, _ in rec.calls)
            assert events == ["completed", "progress", "progress"]
            digest = hashlib.sha256(b"afk_abc").digest()
            secret = digest.hex().encode() if key_form == "hex" else digest
            for headers, body in rec.calls:
                mac = hmac.new(secret, body, hashlib.sha256).digest()
                expected = mac.hex() if encoding == "hex" else base64.b64encode(mac).decode()
                assert hmac.compare_digest(headers["x-webhook-signature"], expected), key_form
            [final] = [json.loads(b) for h, b in rec.calls if h["x-webhook-event"] == "completed"]
            assert final["jobId"] == submitted["jobId"] and final["status"] == "COMPLETED"
            assert final["result"].endswith(f"/cdn/{submitted['jobId']}/0.png")
        job = (await client.get(f"/v2/jobs/{submitted['jobId']}", headers={"X-API-Key": "afk_abc"})).json()
        assert job["status"] == "COMPLETED" and job["progress"] == 100
        assert job["webhookStatus"] == "sent"
        image = await client.get(job["result"])
        assert image.headers["content-type"] == "image/png"


async def test_apiframe_job_result_shape_follows_the_knob(simulator: Any) -> None:
    config = SimulatorConfig(latency_s=(0.0, 0.0), apiframe_result_shape="images")
    headers = {"X-API-Key": "afk_abc"}
    async with simulator(config) as (client, _):
        job_id = (
            await client.post(
                "/v2/images/generate", headers=headers, json={"prompt": "x", "model": "flux-1.1-pro"}
            )
        ).json()["jobId"]
        job = (await client.get(f"/v2/jobs/{job_id}", headers=headers)).json()
        assert job["status"] == "COMPLETED"
        [url] = job["result"]["images"]
        assert url.endswith(".jpg")
        missing = await client.get("/v2/jobs/nope", headers=headers)
        assert missing.status_code == 404


# ---------------------------------------------------------------------------- RunComfy


async def test_runcomfy_cancels_while_queued_and_refuses_once_running(simulator: Any) -> None:
    clock = FakeClock()
    bearer = {"Authorization": "Bearer rc-key"}
    path = "/v1/models/blackforestlabs/flux-1-kontext/pro/text-to-image"
    async with simulator(SimulatorConfig(latency_s=(1.0, 1.0)), clock=clock) as (client, _):
        queued = (await client.post(path, headers=bearer, json={"prompt": "x"})).json()
        assert queued["cancel_url"].endswith(f"/v1/requests/{queued['request_id']}/cancel")
        cancelled = await client.post(queued["cancel_url"], headers=bearer)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        status = (await client.get(queued["status_url"], headers=bearer)).json()
        assert status["status"] == "cancelled"

        running = (
            await client.post(path, headers=bearer, json={"prompt": "y", "aspect_ratio": "1:1"})
        ).json()
        waiting = (await client.get(running["status_url"], headers=bearer)).json()
        assert waiting["status"] == "in_queue" and waiting["queue_position"] == 0
        clock.now += 0.5
        in_progress = (await client.get(running["status_url"], headers=bearer)).json()
        assert in_progress["status"] == "in_progress"
        refused = await client.post(running["cancel_url"], headers=bearer)
        assert refused.status_code == 409

        clock.now += 0.5
        result = (await client.get(running["result_url"], headers=bearer)).json()
        assert result["status"] == "completed"
        image = await client.get(result["output"]["image"])
        with Image.open(io.BytesIO(image.content)) as picture:
            assert picture.size == (512, 512)


async def test_runcomfy_reports_queue_position_and_its_error_codes(simulator: Any) -> None:
    clock = FakeClock()
    bearer = {"Authorization": "Bearer rc-key"}
    edit = "/v1/models/blackforestlabs/flux-1-kontext/pro/edit"
    async with simulator(SimulatorConfig(latency_s=(1.0, 1.0)), clock=clock) as (client, _):
        invalid = await client.post(edit, headers=bearer, json={"prompt": "x"})
        assert invalid.status_code == 422 and isinstance(invalid.json()["error_code"], int)
        first = (
            await client.post(
                edit, headers=bearer, json={"prompt": "x", "image_url": "https://example.com/in.png"}
            )
        ).json()
        clock.now += 0.01
        second = (
            await client.post(
                edit, headers=bearer, json={"prompt": "x", "image_url": "https://example.com/in.png"}
            )
        ).json()
        status = (await client.get(second["status_url"], headers=bearer)).json()
        assert status["status"] == "in_queue" and status["queue_position"] == 1
        assert first["request_id"] != second["request_id"]
        unknown = await client.get("/v1/requests/nope/status", headers=bearer)
        assert unknown.status_code == 404
        assert unknown.json() == {"error_code": 404001, "message": "ResourceNotFound"}
        await client.patch("/_sim/config", json={"insufficient_credits": True})
        broke = await client.post(
            edit, headers=bearer, json={"prompt": "x", "image_url": "https://example.com/in.png"}
        )
        assert broke.status_code == 400 and broke.json()["error_code"] == 400002


# ---------------------------------------------------------------------------- account limits


async def test_submits_past_the_active_task_limit_get_429_until_a_task_ends(simulator: Any) -> None:
    clock = FakeClock()
    config = SimulatorConfig(latency_s=(10.0, 10.0), max_active_tasks=2, retry_after_s=3)
    async with simulator(config, clock=clock) as (client, _sim):

        async def submit() -> httpx.Response:
            return await client.post("/v1/flux-dev", headers=BFL_KEY, json={"prompt": "x"})

        assert [(await submit()).status_code for _ in range(2)] == [200, 200]
        refused = await submit()
        assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
        # The limit is per account, and each protocol is its own account.
        comet = await client.post("/flux/v1/flux-dev", headers={"Authorization": "Bearer k"},
                                  json={"prompt": "x"})
        assert comet.status_code == 200
        clock.now += 10.0  # both BFL tasks are terminal now: two slots are free again
        assert (await submit()).status_code == 200
        stats = (await client.get("/_sim/stats")).json()
    assert stats["bfl"] == {"submitted": 3, "peak_active": 2, "answered_429": 1, "active": 1}
    assert stats["cometapi"] == {"submitted": 1, "peak_active": 1, "answered_429": 0, "active": 0}


async def test_injected_429s_are_counted_too(simulator: Any) -> None:
    async with simulator(SimulatorConfig(submit_429_rate=1.0)) as (client, _sim):
        refused = await client.post("/v1/flux-dev", headers=BFL_KEY, json={"prompt": "x"})
        stats = (await client.get("/_sim/stats")).json()
    assert refused.status_code == 429
    assert stats["bfl"]["answered_429"] == 1 and stats["bfl"]["submitted"] == 0


# ---------------------------------------------------------------------------- config, lifecycle


async def test_patch_config_changes_knobs_and_names_unknown_ones(simulator: Any) -> None:
    async with simulator(SimulatorConfig(api_key="topsecret")) as (client, sim):
        changed = await client.patch("/_sim/config", json={"failure_rate": 0.25, "latency_s": [0.1, 0.3]})
        assert changed.status_code == 200
        assert sim.config.failure_rate == 0.25 and sim.config.latency_s == (0.1, 0.3)
        shown = (await client.get("/_sim/config")).json()
        assert shown["latency_s"] == [0.1, 0.3] and shown["api_key"] == "***"
        unknown = await client.patch("/_sim/config", json={"failure_rat": 0.5})
        assert unknown.status_code == 422 and unknown.json()["knob"] == "failure_rat"
        out_of_range = await client.patch("/_sim/config", json={"failure_rate": 2})
        assert out_of_range.status_code == 422 and out_of_range.json()["knob"] == "failure_rate"
        assert sim.config.failure_rate == 0.25


async def test_mounted_simulator_builds_urls_under_its_mount_prefix() -> None:
    # fluxhook mounts the simulator at /simulator and runs its lifespan from its own.
    inner = create_simulator_app(SimulatorConfig(latency_s=(0.0, 0.0)), rand=random.Random(2))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with inner.router.lifespan_context(inner):
            yield

    outer = Starlette(routes=[Mount("/simulator", app=inner)], lifespan=lifespan)
    async with serving(outer) as base, httpx.AsyncClient(trust_env=False) as client:
        submitted = (
            await client.post(f"{base}/simulator/v1/flux-dev", headers=BFL_KEY, json={"prompt": "x"})
        ).json()
        assert submitted["polling_url"].startswith(f"{base}/simulator/v1/get_result?id=")
        result = await poll_until_terminal(client, submitted["polling_url"], BFL_KEY)
        assert result["result"]["sample"].startswith(f"{base}/simulator/delivery/")
        assert (await client.get(result["result"]["sample"])).status_code == 200


async def test_shutdown_cancels_pending_callbacks_and_closes_the_client() -> None:
    app = create_simulator_app(SimulatorConfig(latency_s=(30.0, 30.0)), rand=random.Random(1))
    sim = app.state.simulator
    with anyio.fail_after(5):
        async with serving(app) as base, httpx.AsyncClient(base_url=base, trust_env=False) as client:
            response = await client.post(
                "/v1/flux-dev",
                headers=BFL_KEY,
                json={"prompt": "x", "webhook_url": "http://127.0.0.1:9/hook"},
            )
            assert response.status_code == 200
            assert sim.client is not None
    assert sim.client is None


def test_config_from_env_reads_fluxhook_sim_variables() -> None:
    config = SimulatorConfig.from_env(
        {
            "FLUXHOOK_SIM_CALLBACK_DROP_RATE": "0.3",
            "FLUXHOOK_SIM_LATENCY_S": "0.1,0.5",
            "FLUXHOOK_SIM_CALLBACK_RETRY_DELAYS_S": "1,2",
            "FLUXHOOK_SIM_INCLUDE_POLLING_URL_WITH_WEBHOOK": "false",
            "FLUXHOOK_SIM_API_KEY": "k",
            "FLUXHOOK_SIM_SEED": "9",
            "FLUXHOOK_SIM_PORT": "8765",  # not a knob: left for whoever owns it
            "PATH": "/usr/bin",
        }
    )
    assert config.callback_drop_rate == 0.3 and config.latency_s == (0.1, 0.5)
    assert config.callback_retry_delays_s == (1.0, 2.0)
    assert config.include_polling_url_with_webhook is False
    assert config.api_key == "k" and config.seed == 9 and "'k'" not in repr(config)
    with pytest.raises(KnobError, match="failure_rate"):
        SimulatorConfig.from_env({"FLUXHOOK_SIM_FAILURE_RATE": "1.5"})


def test_signatures_match_known_answers() -> None:
    body = b'{"id":"t1","status":"Ready"}'
    assert bfl_signature("whsec-test", body) == (
        "sha256=bbe78e478d35b278515e4c47083f846eabce6e2e2c8873d39282725d3bc4d37a"
    )
    assert apiframe_signature("afk_test", body, key_form="hex", encoding="hex") == (
        "6349f64c78721334923cbcffd12ccc6a50bd1203954885a91c3781c9c4d42738"
    )
    assert apiframe_signature("afk_test", body, key_form="raw", encoding="base64") == (
        "CCWojmywbez2sB/3DYcOI+ZE88YHFZZrbOHOwLETAy4="
    )


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_render_image_is_deterministic_and_exactly_sized(fmt: str) -> None:
    data, content_type = render_image(prompt="a fox", seed=1, width=320, height=192, fmt=fmt)
    again, _ = render_image(prompt="a fox", seed=1, width=320, height=192, fmt=fmt)
    other, _ = render_image(prompt="a hen", seed=1, width=320, height=192, fmt=fmt)
    assert data == again and data != other
    assert content_type == f"image/{fmt}"
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.size == (320, 192)


def test_inspection_hides_callback_tokens_in_webhook_urls():
    from service.simulator.state import redacted_url

    token = "cb1.WyJiZmwiLCJqb2JfMDFrYjIifQ.abcdefghijklmnopqrstuvwxyz"
    assert redacted_url(f"http://127.0.0.1:8000/v1/callbacks/bfl/{token}") == "http://127.0.0.1:8000/v1/callbacks/bfl/…"
    assert redacted_url("http://127.0.0.1:9/hook") == "http://127.0.0.1:9/hook"
