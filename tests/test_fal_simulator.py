"""The simulator's fal queue over real loopback HTTP, checked against fluxhook's fal adapter:
its URLs, statuses, results, cancel answers, and callbacks that verify with its own JWKS."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from service.errors import CallbackRejected
from service.providers.base import ProviderState, RawResponse
from service.providers.fal import FalAdapter, verify_fal_signature
from service.simulator import SimulatorConfig, create_simulator_app
from tests.test_simulator import FAST, FakeClock, Receiver, eventually, serving

pytestmark = pytest.mark.anyio

KEY = {"Authorization": "Key fal-test-key"}
SUBMIT = "/fal/fal-ai/flux-pro/v1.1"


@asynccontextmanager
async def fal_simulator(config: SimulatorConfig = FAST, *, clock: FakeClock | None = None
                        ) -> AsyncIterator[tuple[httpx.AsyncClient, Any, str]]:
    app = create_simulator_app(config, rand=random.Random(5), clock=clock)
    async with serving(app) as base, httpx.AsyncClient(base_url=base, trust_env=False) as client:
        yield client, app.state.simulator, base


@asynccontextmanager
async def receiving() -> AsyncIterator[tuple[str, Receiver]]:
    rec = Receiver()
    async with serving(rec.app) as base:
        yield f"{base}/hook", rec


def raw(response: httpx.Response) -> RawResponse:
    return RawResponse(response.status_code, dict(response.headers), response.content)


async def keys_of(client: httpx.AsyncClient, adapter: FalAdapter) -> tuple[bytes, ...]:
    return adapter.parse_keys(raw(await client.get("/fal/.well-known/jwks.json")), now_ms=0).values


async def test_a_request_moves_through_the_queue_and_its_urls_drop_the_subpath():
    clock = FakeClock()
    config = SimulatorConfig(latency_s=(10.0, 10.0))  # queued for 4 s, running until 10 s
    async with fal_simulator(config, clock=clock) as (client, sim, base):
        adapter = FalAdapter(f"{base}/fal", "fal-test-key", ())
        submitted = await client.post(SUBMIT, headers=KEY, json={"prompt": "a fox", "output_format": "png"})
        assert submitted.status_code == 200, submitted.text
        accepted = adapter.parse_submit(raw(submitted), now_ms=0)
        rid = accepted.provider_job_id
        root = f"{base}/fal/fal-ai/flux-pro/requests/{rid}"
        assert submitted.json()["response_url"] == root
        assert accepted.polling_url == f"{root}/status"

        async def report() -> Any:
            call = adapter.status_call(rid, accepted.polling_url)
            return adapter.parse_status(raw(await client.get(call.url, headers=dict(call.headers))), now_ms=0)

        assert (await report()).state is ProviderState.PENDING
        clock.now += 5
        assert (await report()).state is ProviderState.RUNNING
        clock.now += 6
        completed = await report()
        assert (completed.state, completed.result_url) == (ProviderState.RUNNING, root)
        call = adapter.status_call(rid, completed.result_url)
        result = adapter.parse_status(raw(await client.get(call.url, headers=dict(call.headers))), now_ms=0)
        assert result.state is ProviderState.READY
        image = await client.get(result.output_urls[0])
        assert hashlib.sha256(image.content).hexdigest() == sim.tasks[rid].sha256s[0]
        assert image.headers["content-type"] == "image/png"

        with_subpath = await client.get(f"/fal/fal-ai/flux-pro/v1.1/requests/{rid}/status", headers=KEY)
        assert with_subpath.status_code in (404, 405)  # the model id is without its subpath
        assert (await client.get(f"{root}/status")).status_code == 401  # no key


async def test_cancel_gives_each_of_its_four_answers():
    clock = FakeClock()
    async with fal_simulator(SimulatorConfig(latency_s=(10.0, 10.0)), clock=clock) as (client, _, base):
        adapter = FalAdapter(f"{base}/fal", "fal-test-key", ())

        async def new_request() -> str:
            response = await client.post(SUBMIT, headers=KEY, json={"prompt": "p"})
            return str(response.json()["status_url"])

        async def cancel(status_url: str) -> httpx.Response:
            call = adapter.cancel_call("r", status_url)
            assert call is not None
            return await client.put(call.url, headers=dict(call.headers))

        queued, running, done = await new_request(), await new_request(), await new_request()
        answer = await cancel(queued)
        assert (answer.status_code, answer.json()) == (200, {"status": "OK"})
        clock.now += 5
        answer = await cancel(running)
        assert (answer.status_code, answer.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
        clock.now += 6
        answer = await cancel(done)
        assert (answer.status_code, answer.json()) == (400, {"status": "ALREADY_COMPLETED"})
        assert adapter.parse_cancel(raw(answer), now_ms=0) is False
        answer = await cancel(done.replace("/requests/", "/requests/x"))
        assert (answer.status_code, answer.json()) == (404, {"status": "NOT_FOUND"})


async def test_callbacks_verify_with_the_served_jwks_until_the_key_is_rotated():
    async with receiving() as (hook, rec), fal_simulator() as (client, sim, base):
        adapter = FalAdapter(f"{base}/fal", "fal-test-key", ())
        keys = await keys_of(client, adapter)
        await client.post(SUBMIT, headers=KEY, params={"fal_webhook": hook}, json={"prompt": "a fox"})

        async def called() -> bool:
            return len(rec.calls) == 1

        await eventually(called)
        headers, body = rec.calls[0]
        now_s = int(sim.clock())
        verify_fal_signature(headers, body, keys, now_s=now_s)
        report = adapter.parse_callback(body)
        assert report.state is ProviderState.READY
        assert report.provider_job_id == headers["x-fal-webhook-request-id"] == json.loads(body)["request_id"]

        await client.patch("/_sim/config", json={"fal_key_generation": 1})
        rotated = await keys_of(client, adapter)
        assert rotated != keys and len(rotated) == 1  # the old key is gone
        with pytest.raises(CallbackRejected) as refused:
            verify_fal_signature(headers, body, rotated, now_s=now_s)
        assert refused.value.code == "unknown_key"


@pytest.mark.parametrize(("knob", "code"), [("stale_callback_rate", "stale_timestamp"),
                                            ("unsigned_callback_rate", "missing_signature")])
async def test_stale_and_unsigned_callbacks_are_refused_by_the_adapter(knob, code):
    config = SimulatorConfig(latency_s=(0.05, 0.1), callback_retry_delays_s=(), **{knob: 1.0})
    async with receiving() as (hook, rec), fal_simulator(config) as (client, sim, base):
        adapter = FalAdapter(f"{base}/fal", "fal-test-key", ())
        keys = await keys_of(client, adapter)
        await client.post(SUBMIT, headers=KEY, params={"fal_webhook": hook}, json={"prompt": "p"})

        async def called() -> bool:
            return len(rec.calls) == 1

        await eventually(called)
        headers, body = rec.calls[0]
        with pytest.raises(CallbackRejected) as refused:
            verify_fal_signature(headers, body, keys, now_s=int(sim.clock()))
        assert refused.value.code == code


@pytest.mark.parametrize(("knob", "state"), [("failure_rate", ProviderState.FAILED),
                                             ("moderation_rate", ProviderState.MODERATED)])
async def test_failed_requests_say_so_in_the_result_and_the_callback(knob, state):
    config = SimulatorConfig(latency_s=(0.05, 0.1), **{knob: 1.0})
    async with receiving() as (hook, rec), fal_simulator(config) as (client, _, base):
        adapter = FalAdapter(f"{base}/fal", "fal-test-key", ())
        submitted = await client.post(SUBMIT, headers=KEY, params={"fal_webhook": hook}, json={"prompt": "p"})

        async def called() -> bool:
            return len(rec.calls) == 1

        await eventually(called)
        assert adapter.parse_callback(rec.calls[0][1]).state is state
        result = await client.get(submitted.json()["response_url"], headers=KEY)
        assert adapter.parse_status(raw(result), now_ms=0).state is state


async def test_bad_input_is_a_422_naming_the_field():
    async with fal_simulator() as (client, _, _base):
        response = await client.post("/fal/fal-ai/flux-pro/kontext", headers=KEY,
                                     json={"prompt": "p", "safety_tolerance": 3})
        assert response.status_code == 422
        fields = {tuple(d["loc"]) for d in response.json()["detail"]}
        assert fields == {("body", "image_url"), ("body", "safety_tolerance")}  # a string is wanted
