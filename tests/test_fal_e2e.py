"""fal end to end over loopback: fluxhook against the simulator speaking fal's queue, its
ED25519-signed callbacks and its JWKS."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.simulator import SimulatorConfig
from tests.e2e import assert_outputs_match_simulator, running_stack, simulator_tasks, wait_terminal

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]

UPLOAD = "https://example.com/in.png"
JOBS: list[dict[str, Any]] = [
    {"model": "flux-pro-1.1", "input": {"prompt": "a fox", "width": 512, "height": 384, "seed": 1}},
    {"model": "fal-ai/flux/dev", "input": {"prompt": "a city", "steps": 20, "output_format": "png"}},
    {"model": "flux-pro-1.1-ultra", "input": {"prompt": "a fjord", "aspect_ratio": "21:9", "raw": True}},
    {"model": "flux-kontext-pro", "input": {"prompt": "make it snow", "image_url": UPLOAD}},
]


def fal_only(url: str) -> dict[str, str]:
    # No FAL_KEY: a queue URL on this machine is a stand-in, whose JWKS is served beside it.
    return {"FAL_QUEUE_URL": f"{url}/fal", "FLUXHOOK_PROVIDER_ORDER": "fal"}


async def submit(stack: Any, spec: dict[str, Any]) -> str:
    response = await stack.client.post("/v1/jobs", json={"provider": "fal", **spec})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def test_fal_jobs_succeed_by_callback_with_no_poll(tmp_path):
    async with running_stack(tmp_path, SimulatorConfig(latency_s=(0.2, 0.6), seed=31),
                             provider_env=fal_only) as stack:
        ids = [await submit(stack, spec) for spec in JOBS]
        docs = await wait_terminal(stack.client, ids, timeout=60)
        tasks = await simulator_tasks(stack.provider_url)
        await assert_outputs_match_simulator(stack.client, docs, tasks)

    for doc in docs.values():
        assert doc["status"] == "succeeded", doc["error"]
        assert doc["completion_source"] == "callback"
        task = tasks[doc["provider_job_id"]]
        assert task["protocol"] == "fal"
        assert task["poll_count"] == 0
        assert [e["status_code"] for e in task["callback_log"]] == [200]
    models = sorted(tasks[d["provider_job_id"]]["model"] for d in docs.values())
    assert models == ["fal-ai/flux-pro/kontext", "fal-ai/flux-pro/v1.1", "fal-ai/flux-pro/v1.1-ultra",
                      "fal-ai/flux/dev"]


@pytest.mark.parametrize("knob", ["callback_drop_rate", "stale_callback_rate", "unsigned_callback_rate"])
async def test_without_a_usable_callback_fal_jobs_finish_by_polling(tmp_path, knob):
    config = SimulatorConfig(latency_s=(0.2, 0.5), seed=32, callback_retry_delays_s=(), **{knob: 1.0})
    async with running_stack(tmp_path, config, provider_env=fal_only) as stack:
        ids = [await submit(stack, spec) for spec in JOBS[:2]]
        docs = await wait_terminal(stack.client, ids, timeout=60)
        tasks = await simulator_tasks(stack.provider_url)
        await assert_outputs_match_simulator(stack.client, docs, tasks)

    for doc in docs.values():
        assert doc["status"] == "succeeded", doc["error"]
        assert doc["completion_source"] == "poll"
        task = tasks[doc["provider_job_id"]]
        assert task["poll_count"] >= 2  # the status, then the result
        if knob != "callback_drop_rate":  # sent, and refused
            assert [e["status_code"] for e in task["callback_log"]] == [401]


async def test_a_callback_replayed_to_another_job_is_refused_and_both_succeed(tmp_path):
    config = SimulatorConfig(latency_s=(0.2, 0.3), seed=33)
    async with running_stack(tmp_path, config, provider_env=fal_only) as stack:
        first = await submit(stack, JOBS[0])
        [done] = (await wait_terminal(stack.client, [first], timeout=30)).values()
        async with httpx.AsyncClient() as sim:
            await sim.patch(f"{stack.provider_url}/_sim/config", json={"replayed_callback_rate": 1.0})
        second = await submit(stack, JOBS[1])
        docs = await wait_terminal(stack.client, [second], timeout=30)
        tasks = await simulator_tasks(stack.provider_url)
        after = (await stack.client.get(f"/v1/jobs/{first}")).json()

    # The second request's callback went to its own job (200) and, replayed, to the first's (403).
    second_log = tasks[docs[second]["provider_job_id"]]["callback_log"]
    victim_log = tasks[done["provider_job_id"]]["callback_log"]
    assert [(e["event"], e["status_code"]) for e in second_log] == [("terminal", 200)]
    assert [(e["event"], e["status_code"]) for e in victim_log] == [("terminal", 200), ("replayed", 403)]
    assert docs[second]["status"] == "succeeded"
    assert docs[second]["completion_source"] == "callback"
    assert after == done  # the first job did not move


async def test_a_rotated_simulator_key_is_followed_without_a_restart(tmp_path):
    async with running_stack(tmp_path, SimulatorConfig(latency_s=(0.2, 0.3), seed=34),
                             provider_env=fal_only) as stack:
        first = await submit(stack, JOBS[0])
        await wait_terminal(stack.client, [first], timeout=30)
        async with httpx.AsyncClient() as sim:
            await sim.patch(f"{stack.provider_url}/_sim/config", json={"fal_key_generation": 1})
        second = await submit(stack, JOBS[1])
        docs = await wait_terminal(stack.client, [first, second], timeout=30)

    for doc in docs.values():
        assert doc["status"] == "succeeded"
        assert doc["completion_source"] == "callback"


async def test_an_auto_job_fails_over_from_a_saturated_bfl_to_fal(tmp_path):
    from service.loopback import serve
    from service.simulator import create_simulator_app

    saturated = SimulatorConfig(submit_429_rate=1.0, retry_after_s=30, seed=35)
    async with serve(create_simulator_app(SimulatorConfig(latency_s=(0.2, 0.4), seed=36))) as fal:
        env = {"FAL_QUEUE_URL": f"{fal}/fal", "FLUXHOOK_PROVIDER_ORDER": "bfl,fal"}
        async with running_stack(tmp_path, saturated, provider_env=lambda _: env) as stack:
            response = await stack.client.post("/v1/jobs", json={
                "model": "flux-pro-1.1", "input": {"prompt": "failover", "width": 512, "height": 384}})
            job = response.json()
            [doc] = (await wait_terminal(stack.client, [job["id"]], timeout=30)).values()
            fal_tasks = await simulator_tasks(fal)

    assert doc["status"] == "succeeded"
    assert doc["provider"] == "fal"
    assert doc["completion_source"] == "callback"
    assert [(a["provider"], a["outcome"], a["http_status"]) for a in doc["attempts"]] == [
        ("bfl", "failed_over", 429), ("fal", "accepted", 200)]
    assert fal_tasks[doc["provider_job_id"]]["model"] == "fal-ai/flux-pro/v1.1"
