"""Cancelling a job: polling stops, later callbacks are ignored, a final job answers 409."""

from __future__ import annotations

import anyio
import pytest

from service.simulator import SimulatorConfig
from tests.conftest import assert_error_shape
from tests.e2e import running_stack, simulator_tasks

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]

SLOW = SimulatorConfig(latency_s=(2.0, 2.0), seed=1)


async def wait_status(client, job_id: str, status: str) -> dict:
    with anyio.fail_after(20):
        while (doc := (await client.get(f"/v1/jobs/{job_id}")).json())["status"] != status:
            await anyio.sleep(0.05)
    return doc


async def test_cancelled_job_ignores_its_later_callback_and_is_never_polled(tmp_path):
    async with running_stack(tmp_path, SLOW) as stack:
        job = (await stack.client.post("/v1/jobs", json={
            "provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "cancel me"}})).json()
        submitted = await wait_status(stack.client, job["id"], "submitted")

        response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel")

        assert response.status_code == 200
        cancelled = response.json()
        assert cancelled["status"] == "cancelled"
        assert cancelled["error"]["code"] == "cancelled"
        assert "no cancel endpoint" in cancelled["error"]["message"]
        # The provider finishes anyway and calls back; fluxhook acknowledges and ignores it.
        with anyio.fail_after(20):
            while True:
                task = (await simulator_tasks(stack.provider_url))[submitted["provider_job_id"]]
                if task["callbacks_acknowledged"]:
                    break
                await anyio.sleep(0.1)
        after = (await stack.client.get(f"/v1/jobs/{job['id']}")).json()
        assert after["status"] == "cancelled" and after["outputs"] == []
        assert task["poll_count"] == 0 and task["download_count"] == 0


async def test_cancelling_a_finished_job_is_a_409_naming_its_status(tmp_path):
    async with running_stack(tmp_path, SimulatorConfig(latency_s=(0.1, 0.2), seed=2)) as stack:
        job = (await stack.client.post("/v1/jobs", json={
            "provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "done already"}})).json()
        await wait_status(stack.client, job["id"], "succeeded")
        error = assert_error_shape(await stack.client.post(f"/v1/jobs/{job['id']}/cancel"), 409,
                                   "job_finished")
        assert error["details"][0]["current"] == "succeeded"
        assert_error_shape(await stack.client.post("/v1/jobs/job_nope/cancel"), 404, "not_found")


async def test_a_queued_job_cancelled_before_submit_is_never_sent(tmp_path):
    # Every submit is answered 503, so the job sits queued between retries.
    config = SimulatorConfig(submit_5xx_rate=1.0, seed=3)
    async with running_stack(tmp_path, config, FLUXHOOK_RETRY_BASE_SECONDS="5",
                             FLUXHOOK_RETRY_MAX_SECONDS="5") as stack:
        job = (await stack.client.post("/v1/jobs", json={
            "provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "never mind"}})).json()
        with anyio.fail_after(10):
            while not (await stack.client.get(f"/v1/jobs/{job['id']}")).json()["attempts"]:
                await anyio.sleep(0.05)
        cancelled = (await stack.client.post(f"/v1/jobs/{job['id']}/cancel")).json()
        assert cancelled["status"] == "cancelled"
        assert "before it reached the provider" in cancelled["error"]["message"]
        assert [a["outcome"] for a in cancelled["attempts"]] == ["unavailable"]
