"""Replicate end to end over loopback: fluxhook and the simulator speaking Replicate's protocol,
with its Standard-Webhooks-signed callbacks, the account's secret fetched over HTTP, and the
knobs for dropped, replayed and stale callbacks."""

from __future__ import annotations

import httpx
import pytest

from service.loopback import serve
from service.simulator import SimulatorConfig, create_simulator_app
from tests.e2e import assert_outputs_match_simulator, running_stack, simulator_tasks, wait_terminal

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]

TOKEN = "r8-e2e-token"


def replicate(url: str) -> dict[str, str]:
    return {"REPLICATE_BASE_URL": url, "REPLICATE_API_TOKEN": TOKEN, "FLUXHOOK_POLL_BASE_SECONDS": "0.3"}


JOB = {"provider": "replicate", "model": "flux-pro-1.1",
       "input": {"prompt": "a heron", "aspect_ratio": "3:2"}}
SCHNELL = {"provider": "replicate", "model": "black-forest-labs/flux-schnell",
           "input": {"prompt": "a kingfisher", "steps": 4, "output_format": "png"}}


async def submit(stack, body: dict) -> str:
    response = await stack.client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def test_replicate_jobs_succeed_by_signed_callback_with_no_poll(tmp_path):
    config = SimulatorConfig(latency_s=(0.3, 0.6), seed=31)
    async with running_stack(tmp_path, config, provider_env=replicate) as stack:
        ids = [await submit(stack, JOB), await submit(stack, SCHNELL)]
        docs = await wait_terminal(stack.client, ids, timeout=30)
        tasks = await simulator_tasks(stack.provider_url)
        await assert_outputs_match_simulator(stack.client, docs, tasks)

    for doc in docs.values():
        assert (doc["status"], doc["completion_source"]) == ("succeeded", "callback"), doc["error"]
        task = tasks[doc["provider_job_id"]]
        assert task["protocol"] == "replicate" and task["poll_count"] == 0
        assert task["callbacks_acknowledged"] == 2  # start and completed, both verified
    # [schnell] answers a list of URLs, FLUX1.1 [pro] one URL: both end as one stored output.
    assert sorted(t["model"] for t in tasks.values()) == [
        "black-forest-labs/flux-1.1-pro", "black-forest-labs/flux-schnell"]


async def test_with_callbacks_dropped_replicate_jobs_finish_by_polling(tmp_path):
    config = SimulatorConfig(latency_s=(0.2, 0.4), callback_drop_rate=1.0, seed=32)
    async with running_stack(tmp_path, config, provider_env=replicate,
                             FLUXHOOK_POLL_GRACE_SECONDS="1") as stack:
        ids = [await submit(stack, JOB), await submit(stack, JOB)]
        docs = await wait_terminal(stack.client, ids, timeout=30)
        tasks = await simulator_tasks(stack.provider_url)
        await assert_outputs_match_simulator(stack.client, docs, tasks)

    for doc in docs.values():
        assert (doc["status"], doc["completion_source"]) == ("succeeded", "poll")
        assert tasks[doc["provider_job_id"]]["callback_dropped"]


async def test_stale_callbacks_are_refused_and_the_job_finishes_by_polling(tmp_path):
    config = SimulatorConfig(latency_s=(0.2, 0.4), stale_callback_rate=1.0,
                             callback_retry_delays_s=(), seed=33)
    async with running_stack(tmp_path, config, provider_env=replicate,
                             FLUXHOOK_POLL_GRACE_SECONDS="1") as stack:
        job_id = await submit(stack, JOB)
        [doc] = (await wait_terminal(stack.client, [job_id], timeout=30)).values()
        tasks = await simulator_tasks(stack.provider_url)

    assert (doc["status"], doc["completion_source"]) == ("succeeded", "poll")
    log = tasks[doc["provider_job_id"]]["callback_log"]
    assert log and {entry["status_code"] for entry in log} == {401}  # start and completed


async def test_a_callback_replayed_for_another_job_is_refused_and_both_jobs_succeed(tmp_path):
    config = SimulatorConfig(latency_s=(0.3, 0.3), replayed_callback_rate=1.0,
                             callback_retry_delays_s=(), seed=34)
    async with running_stack(tmp_path, config, provider_env=replicate) as stack:
        first = await submit(stack, JOB)
        second = await submit(stack, {**JOB, "input": {"prompt": "a stork"}})
        docs = await wait_terminal(stack.client, [first, second], timeout=30)
        tasks = await simulator_tasks(stack.provider_url)
        await assert_outputs_match_simulator(stack.client, docs, tasks)

    replays = [entry for task in tasks.values() for entry in task["callback_log"]
               if entry["event"] == "replayed"]
    assert replays and {entry["status_code"] for entry in replays} == {403}  # wrong_job
    for doc in docs.values():
        assert (doc["status"], doc["completion_source"]) == ("succeeded", "callback")


async def test_a_secret_rotated_at_replicate_is_followed_without_a_restart(tmp_path):
    config = SimulatorConfig(latency_s=(0.2, 0.4), seed=35)
    async with running_stack(tmp_path, config, provider_env=replicate) as stack:
        before = await submit(stack, JOB)
        await wait_terminal(stack.client, [before], timeout=30)
        async with httpx.AsyncClient() as client:
            rotated = await client.post(f"{stack.provider_url}/_sim/replicate/rotate-secret",
                                        headers={"Authorization": f"Bearer {TOKEN}"})
        assert rotated.status_code == 200
        after = await submit(stack, JOB)
        docs = await wait_terminal(stack.client, [before, after], timeout=30)
        tasks = await simulator_tasks(stack.provider_url)

    for doc in docs.values():
        assert (doc["status"], doc["completion_source"]) == ("succeeded", "callback")
        assert tasks[doc["provider_job_id"]]["poll_count"] == 0


async def test_a_429_from_replicate_moves_an_auto_job_to_the_next_provider(tmp_path):
    # Acceptance line 4 names fal as the next provider; here BFL serves the same unified model.
    throttled = SimulatorConfig(submit_429_rate=1.0, retry_after_s=30, seed=36)
    healthy = SimulatorConfig(latency_s=(0.2, 0.5), seed=37)
    async with serve(create_simulator_app(throttled)) as replicate_url:
        env = {**replicate(replicate_url), "FLUXHOOK_PROVIDER_ORDER": "replicate,bfl"}
        async with running_stack(tmp_path, healthy, provider_env=lambda _: env) as stack:
            job = (await stack.client.post("/v1/jobs", json={
                "model": "flux-pro-1.1",
                "input": {"prompt": "failover", "width": 512, "height": 512}})).json()
            assert job["provider"] == "replicate"
            [doc] = (await wait_terminal(stack.client, [job["id"]], timeout=30)).values()
            replicate_tasks = await simulator_tasks(replicate_url)

    assert (doc["status"], doc["provider"]) == ("succeeded", "bfl")
    assert [(a["provider"], a["outcome"], a["http_status"]) for a in doc["attempts"]] == [
        ("replicate", "failed_over", 429),
        ("bfl", "accepted", 200),
    ]
    assert "Your rate limit resets in ~30s" in doc["attempts"][0]["message"]
    assert replicate_tasks == {}  # Replicate never created (or charged for) a prediction


async def test_a_429_from_replicate_moves_an_auto_job_to_fal_and_its_attempts_show_both(tmp_path):
    """Issue 12, acceptance 4: Replicate throttles every submit; `auto` tries fal next."""
    throttled = SimulatorConfig(submit_429_rate=1.0, retry_after_s=30, seed=39)
    healthy = SimulatorConfig(latency_s=(0.2, 0.5), seed=40)
    async with serve(create_simulator_app(throttled)) as replicate_url:
        def env(fal_url: str) -> dict[str, str]:
            return {**replicate(replicate_url), "FAL_QUEUE_URL": f"{fal_url}/fal",
                    "FLUXHOOK_PROVIDER_ORDER": "replicate,fal"}

        async with running_stack(tmp_path, healthy, provider_env=env) as stack:
            job = (await stack.client.post("/v1/jobs", json={
                "provider": "auto", "model": "flux-pro-1.1",
                "input": {"prompt": "failover", "width": 512, "height": 512}})).json()
            [doc] = (await wait_terminal(stack.client, [job["id"]], timeout=30)).values()
            replicate_tasks = await simulator_tasks(replicate_url)
            fal_tasks = await simulator_tasks(stack.provider_url)
            await assert_outputs_match_simulator(stack.client, {doc["id"]: doc}, fal_tasks)

    assert (doc["status"], doc["provider"], doc["completion_source"]) == ("succeeded", "fal", "callback")
    assert [(a["provider"], a["outcome"], a["http_status"]) for a in doc["attempts"]] == [
        ("replicate", "failed_over", 429),
        ("fal", "accepted", 200),
    ]
    assert replicate_tasks == {}  # Replicate created (and charged for) nothing
    assert fal_tasks[doc["provider_job_id"]]["model"] == "fal-ai/flux-pro/v1.1"


async def test_throttled_and_failing_submits_and_duplicate_callbacks_still_give_one_image_each(tmp_path):
    config = SimulatorConfig(latency_s=(0.2, 0.4), submit_429_rate=0.3, submit_5xx_rate=0.3,
                             poll_5xx_rate=0.3, callback_duplicate_rate=1.0, retry_after_s=0, seed=38)
    async with running_stack(tmp_path, config, provider_env=replicate) as stack:
        ids = [await submit(stack, {**JOB, "input": {"prompt": f"bird {n}"}}) for n in range(4)]
        docs = await wait_terminal(stack.client, ids, timeout=60)
        tasks = await simulator_tasks(stack.provider_url)
        await assert_outputs_match_simulator(stack.client, docs, tasks)

    for doc in docs.values():
        assert doc["status"] == "succeeded" and len(doc["outputs"]) == 1
        assert tasks[doc["provider_job_id"]]["callbacks_acknowledged"] == 3  # start + completed twice
    assert len(tasks) == 4  # a refused submit created nothing; none was created twice
    retried = [a["http_status"] for d in docs.values() for a in d["attempts"]
               if a["outcome"] == "unavailable"]
    assert retried and set(retried) <= {429, 503}
