"""The simulator's Replicate: predictions, cancel, errors, and callbacks signed per Standard
Webhooks with the account's secret, checked by fluxhook's own verifier over real loopback HTTP."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from service.providers.base import RawResponse
from service.providers.replicate import ReplicateAdapter
from service.simulator import SimulatorConfig, create_simulator_app
from tests.test_simulator import FAST, FakeClock, Receiver, eventually, serving

pytestmark = pytest.mark.anyio


@pytest.fixture
def simulator() -> Callable[..., Any]:
    @asynccontextmanager
    async def start(config: SimulatorConfig = FAST, *,
                    clock: FakeClock | None = None) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
        app = create_simulator_app(config, rand=random.Random(7), clock=clock)
        async with serving(app) as base, httpx.AsyncClient(base_url=base, trust_env=False) as client:
            yield client, app.state.simulator

    return start


@pytest.fixture
def receiver() -> Callable[..., Any]:
    @asynccontextmanager
    async def start() -> AsyncIterator[tuple[str, Receiver]]:
        rec = Receiver()
        async with serving(rec.app) as base:
            yield f"{base}/hook", rec

    return start

AUTH = {"Authorization": "Bearer r8-account-a"}
PRO = "/v1/models/black-forest-labs/flux-1.1-pro/predictions"


async def record(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    return dict((await client.get(f"/_sim/tasks/{task_id}")).json())


async def secret_keys(client: httpx.AsyncClient, base: str, headers: dict[str, str]) -> Any:
    answer = await client.get("/v1/webhooks/default/secret", headers=headers)
    adapter = ReplicateAdapter(base, "unused", ())
    return adapter.parse_keys(RawResponse(answer.status_code, dict(answer.headers), answer.content), now_ms=0)


async def test_a_prediction_runs_to_an_output_url_and_schnell_answers_a_list(simulator: Any) -> None:
    async with simulator() as (client, _):
        created = await client.post(PRO, headers=AUTH,
                                    json={"input": {"prompt": "a fox", "aspect_ratio": "16:9"}})
        assert created.status_code == 201
        prediction = created.json()
        assert (prediction["status"], prediction["output"]) == ("starting", None)
        assert prediction["urls"]["get"].endswith(f"/v1/predictions/{prediction['id']}")
        schnell = (await client.post("/v1/models/black-forest-labs/flux-schnell/predictions", headers=AUTH,
                                     json={"input": {"prompt": "a fox", "output_format": "png"}})).json()

        async def both_done() -> bool:
            got = [(await client.get(f"/v1/predictions/{p['id']}", headers=AUTH)).json()
                   for p in (prediction, schnell)]
            return all(g["status"] == "succeeded" for g in got)

        await eventually(both_done)
        pro = (await client.get(f"/v1/predictions/{prediction['id']}", headers=AUTH)).json()
        fast = (await client.get(f"/v1/predictions/{schnell['id']}", headers=AUTH)).json()
        assert isinstance(pro["output"], str) and pro["output"].endswith(".webp")
        assert isinstance(fast["output"], list) and fast["output"][0].endswith(".png")
        image = await client.get(pro["output"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/webp"


async def test_callbacks_are_signed_with_the_accounts_secret_and_verify(
        simulator: Any, receiver: Any) -> None:
    # A real clock: `start` is built while the prediction runs (0.4 s to 1 s after submit).
    config = SimulatorConfig(latency_s=(1.0, 1.0), callback_retry_delays_s=(0.05,))
    async with receiver() as (hook_url, rec), simulator(config) as (client, _):
        keys = await secret_keys(client, str(client.base_url), AUTH)
        other = await secret_keys(client, str(client.base_url), {"Authorization": "Bearer r8-account-b"})
        assert keys != other  # one secret per account
        created = (await client.post(PRO, headers=AUTH, json={
            "input": {"prompt": "a fox"}, "webhook": hook_url,
            "webhook_events_filter": ["start", "completed"]})).json()

        async def both() -> bool:
            return len(rec.calls) == 2

        await eventually(both)

    adapter = ReplicateAdapter("http://unused", "unused", ())
    statuses = []
    for headers, body in rec.calls:
        adapter.verify_signed(headers, body, keys, now_ms=int(time.time() * 1000))
        assert headers["webhook-id"].startswith("msg_")
        statuses.append(json.loads(body)["status"])
    assert statuses == ["processing", "succeeded"]
    assert json.loads(rec.calls[-1][1])["id"] == created["id"]


async def test_a_rotated_secret_signs_every_later_callback(simulator: Any, receiver: Any) -> None:
    async with receiver() as (hook_url, rec), simulator() as (client, _):
        before = await secret_keys(client, str(client.base_url), AUTH)
        assert (await client.post("/_sim/replicate/rotate-secret", headers=AUTH)).status_code == 200
        after = await secret_keys(client, str(client.base_url), AUTH)
        await client.post(PRO, headers=AUTH, json={"input": {"prompt": "a fox"}, "webhook": hook_url,
                                                   "webhook_events_filter": ["completed"]})

        async def one() -> bool:
            return len(rec.calls) == 1

        await eventually(one)
    [(headers, body)] = rec.calls
    stamp = int(headers["webhook-timestamp"]) * 1000
    adapter = ReplicateAdapter("http://unused", "unused", ())
    adapter.verify_signed(headers, body, after, now_ms=stamp)
    with pytest.raises(Exception, match="matches no signing secret"):
        adapter.verify_signed(headers, body, before, now_ms=stamp)


async def test_stale_callbacks_are_stamped_six_minutes_back(simulator: Any, receiver: Any) -> None:
    clock = FakeClock()
    config = SimulatorConfig(latency_s=(0.05, 0.1), stale_callback_rate=1.0, callback_retry_delays_s=())
    async with receiver() as (hook_url, rec), simulator(config, clock=clock) as (client, _):
        await client.post(PRO, headers=AUTH, json={"input": {"prompt": "a fox"}, "webhook": hook_url,
                                                   "webhook_events_filter": ["completed"]})
        clock.now += 1.0

        async def one() -> bool:
            return len(rec.calls) == 1

        await eventually(one)
    [(headers, _)] = rec.calls
    assert int(headers["webhook-timestamp"]) == int(clock.now) - 360


@pytest.mark.parametrize(("config", "request_kwargs", "status", "detail"), [
    (FAST, {"json": {"input": {"prompt": "x"}}, "headers": {}}, 401, None),
    (FAST, {"json": {"input": {}}, "headers": AUTH}, 422, "input.prompt"),
    (SimulatorConfig(submit_429_rate=1.0, retry_after_s=30),
     {"json": {"input": {"prompt": "x"}}, "headers": AUTH}, 429,
     "Request was throttled. Your rate limit resets in ~30s."),
    (SimulatorConfig(insufficient_credits=True), {"json": {"input": {"prompt": "x"}}, "headers": AUTH},
     402, "insufficient credit"),
], ids=["no-key", "no-prompt", "throttled", "no-credit"])
async def test_errors_are_problem_objects(simulator: Any, config, request_kwargs, status, detail) -> None:
    async with simulator(config) as (client, _):
        answer = await client.post(PRO, **request_kwargs)
    assert answer.status_code == status
    body = answer.json()
    assert body["status"] == status and "title" in body
    if detail:
        assert detail in body["detail"]
    if status == 429:
        assert answer.headers["retry-after"] == "30"


async def test_cancel_stops_a_running_prediction_and_leaves_a_finished_one(simulator: Any) -> None:
    clock = FakeClock()
    async with simulator(SimulatorConfig(latency_s=(10.0, 10.0)), clock=clock) as (client, _):
        running = (await client.post(PRO, headers=AUTH, json={"input": {"prompt": "x"}})).json()
        cancelled = (await client.post(f"/v1/predictions/{running['id']}/cancel", headers=AUTH)).json()
        assert cancelled["status"] == "canceled"
        finished = (await client.post(PRO, headers=AUTH, json={"input": {"prompt": "y"}})).json()
        clock.now += 11
        answer = (await client.post(f"/v1/predictions/{finished['id']}/cancel", headers=AUTH)).json()
        assert answer["status"] == "succeeded"
        unknown = await client.post("/v1/predictions/nope/cancel", headers=AUTH)
        assert unknown.status_code == 404
