"""Every provider protocol end to end over loopback, against the simulator speaking each."""

from __future__ import annotations

import anyio
import pytest

from service.simulator import SimulatorConfig
from tests.e2e import assert_outputs_match_simulator, running_stack, simulator_tasks, wait_terminal

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]


def every_provider(url: str) -> dict[str, str]:
    return {
        "COMETAPI_BASE_URL": url,
        "COMETAPI_API_KEY": "comet-key",
        "APIFRAME_BASE_URL": url,
        "APIFRAME_API_KEY": "afk_test",
        "RUNCOMFY_BASE_URL": url,
        "RUNCOMFY_API_TOKEN": "rc-token",
        "REPLICATE_BASE_URL": url,
        "REPLICATE_API_TOKEN": "r8-token",
        "FAL_QUEUE_URL": f"{url}/fal",
        "FAL_KEY": "fal-key",
        "FAL_JWKS_URL": f"{url}/fal/.well-known/jwks.json",
        "FLUXHOOK_POLL_BASE_SECONDS": "0.3",
    }


JOBS = {
    "bfl": {"model": "flux-pro-1.1", "input": {"prompt": "a fox", "width": 512, "height": 384}},
    "cometapi": {"model": "flux-pro-1.1", "input": {"prompt": "a fox", "width": 512, "height": 384}},
    "apiframe": {"model": "flux-pro-1.1", "input": {"prompt": "a fox", "aspect_ratio": "4:3"}},
    "runcomfy": {
        "model": "flux-kontext-pro",
        "input": {"prompt": "make it snow", "image_url": "https://example.com/in.png", "aspect_ratio": "1:1"},
    },
    "replicate": {"model": "flux-pro-1.1", "input": {"prompt": "a fox", "width": 512, "height": 384}},
    "fal": {"model": "flux-pro-1.1", "input": {"prompt": "a fox", "width": 512, "height": 384}},
}


async def test_every_provider_completes_jobs_with_the_same_document_shape(tmp_path):
    config = SimulatorConfig(latency_s=(0.3, 0.8), seed=21)
    async with running_stack(tmp_path, config, provider_env=every_provider) as stack:
        ids = {}
        for provider, spec in JOBS.items():
            response = await stack.client.post("/v1/jobs", json={"provider": provider, **spec})
            assert response.status_code == 202, response.text
            ids[provider] = response.json()["id"]
        docs = await wait_terminal(stack.client, list(ids.values()), timeout=60)
        tasks = await simulator_tasks(stack.provider_url)
        await assert_outputs_match_simulator(stack.client, docs, tasks)

    by_provider = {provider: docs[job_id] for provider, job_id in ids.items()}
    shapes = {provider: sorted(doc) for provider, doc in by_provider.items()}
    assert len({tuple(shape) for shape in shapes.values()}) == 1, shapes
    for provider, doc in by_provider.items():
        assert doc["status"] == "succeeded", (provider, doc["error"])
        assert doc["provider"] == provider
        assert len(doc["outputs"]) == 1
        task = tasks[doc["provider_job_id"]]
        assert task["protocol"] == provider
        expected = "poll" if provider == "runcomfy" else "callback"
        assert doc["completion_source"] == expected, provider
    # Each provider was asked for its own name of the model.
    assert tasks[by_provider["apiframe"]["provider_job_id"]]["model"] == "flux-1.1-pro"
    assert tasks[by_provider["replicate"]["provider_job_id"]]["model"] == "black-forest-labs/flux-1.1-pro"
    assert (
        tasks[by_provider["runcomfy"]["provider_job_id"]]["model"]
        == "blackforestlabs/flux-1-kontext/pro/edit"
    )
    assert tasks[by_provider["fal"]["provider_job_id"]]["model"] == "fal-ai/flux-pro/v1.1"
    assert "polls it from the start" in by_provider["runcomfy"]["attempts"][0]["message"]


async def test_runcomfy_job_cancelled_while_queued_is_cancelled_at_the_provider(tmp_path):
    config = SimulatorConfig(latency_s=(6.0, 6.0), seed=22)  # queued for the first 2.4 s
    async with running_stack(tmp_path, config, provider_env=every_provider) as stack:
        job = (await stack.client.post("/v1/jobs", json={"provider": "runcomfy", **JOBS["runcomfy"]})).json()
        with anyio.fail_after(10):
            while (doc := (await stack.client.get(f"/v1/jobs/{job['id']}")).json())[
                "provider_job_id"
            ] is None:
                await anyio.sleep(0.05)
        cancelled = (await stack.client.post(f"/v1/jobs/{job['id']}/cancel")).json()
        assert cancelled["status"] == "cancelled"
        assert cancelled["error"]["message"] == "cancelled by request and at runcomfy"
        task = (await simulator_tasks(stack.provider_url))[doc["provider_job_id"]]
        assert task["status"] == "cancelled"


async def test_failover_moves_to_the_next_provider_when_the_first_is_saturated(tmp_path):
    saturated = SimulatorConfig(submit_429_rate=1.0, retry_after_s=30, seed=23)
    healthy = SimulatorConfig(latency_s=(0.2, 0.5), seed=24)
    from service.loopback import serve
    from service.simulator import create_simulator_app

    async with serve(create_simulator_app(healthy)) as second:
        env = {
            "COMETAPI_BASE_URL": second,
            "COMETAPI_API_KEY": "comet-key",
            "FLUXHOOK_PROVIDER_ORDER": "bfl,cometapi",
        }
        async with running_stack(tmp_path, saturated, provider_env=lambda _: env) as stack:
            job = (
                await stack.client.post(
                    "/v1/jobs",
                    json={
                        "model": "flux-pro-1.1",
                        "input": {"prompt": "failover", "width": 256, "height": 256},
                    },
                )
            ).json()
            assert job["provider"] == "bfl"
            [doc] = (await wait_terminal(stack.client, [job["id"]], timeout=30)).values()
            first_tasks = await simulator_tasks(stack.provider_url)
            second_tasks = await simulator_tasks(second)

    assert doc["status"] == "succeeded"
    assert doc["provider"] == "cometapi"
    assert [(a["provider"], a["outcome"], a["http_status"]) for a in doc["attempts"]] == [
        ("bfl", "failed_over", 429),
        ("cometapi", "accepted", 200),
    ]
    assert first_tasks == {}  # the saturated provider never accepted (or charged for) it
    assert list(second_tasks) == [doc["provider_job_id"]]
