"""kill -9 between a stored success and its notification: the deliveries the download leased for
its own notifier in the success's transaction are sent once, after the lease, by the restarted
process (service/fetcher.py, crash point `notify.leased`)."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import httpx
import pytest

from service.loopback import serve
from service.simulator import SimulatorConfig, create_simulator_app
from tests.e2e import fluxhook_env, free_port, run_fluxhook, submit_jobs, wait_terminal, wait_up
from tests.receivers import Receiver

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]


async def test_sigkill_after_a_success_committed_with_its_deliveries_leased_sends_each_once(tmp_path: Path):
    simulator = create_simulator_app(SimulatorConfig(latency_s=(0.2, 0.5), seed=11))
    receiver = Receiver(fetch_outputs=False)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "fluxhook.log"
    async with serve(simulator) as provider_url, serve(receiver.app()) as receiver_url, \
            httpx.AsyncClient(base_url=base, timeout=10) as client:
        # A delivery's lease: max(task lease, webhook timeout + 5 s) = 6 s.
        env = fluxhook_env(tmp_path / "data", base, provider_url, FLUXHOOK_TASK_LEASE_SECONDS="2",
                           FLUXHOOK_WEBHOOK_TIMEOUT_SECONDS="1",
                           FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS="loopback")
        crashing = {**env, "FLUXHOOK_CRASH_AT": "notify.leased"}
        process = run_fluxhook(["serve", "--port", str(port)], crashing, log)
        try:
            await wait_up(f"{base}/healthz", process)
            sub = (await client.post("/v1/subscriptions", json={"url": f"{receiver_url}/hook",
                                                                 "events": ["job.succeeded"]})).json()
            receiver.secret = sub["secret"]
            ids = await submit_jobs(client, 4)
            with anyio.fail_after(30):  # the first stored success kills it
                while process.poll() is None:
                    await anyio.sleep(0.05)
            assert process.returncode == -signal.SIGKILL
            assert "killing this process at notify.leased" in log.read_text()
            assert receiver.received == []  # leased, committed, and not sent

            process = run_fluxhook(["serve", "--port", str(port)], env, log)
            await wait_up(f"{base}/healthz", process)
            final = await wait_terminal(client, ids, timeout=60)
            assert {d["status"] for d in final.values()} == {"succeeded"}, log.read_text()[-3000:]
            with anyio.fail_after(30):
                while len(receiver.accepted_ids()) < len(ids):
                    await anyio.sleep(0.1)
            logs = {job_id: (await client.get(f"/v1/jobs/{job_id}/deliveries")).json()["data"]
                    for job_id in ids}
        finally:
            process.kill()
            process.wait(timeout=10)

    # Each job's job.succeeded reached the verifying receiver once, under one webhook-id.
    accepted = receiver.accepted_ids()
    assert len(accepted) == len(set(accepted)) == len(ids)
    assert receiver.forged == 0
    assert sorted(r.payload["data"]["id"] for r in receiver.received) == sorted(ids)
    deliveries = [d for log_ in logs.values() for d in log_]
    assert {d["status"] for d in deliveries} == {"delivered"}
    # The crashed process's lease ran out and its try counted: one delivery was sent on try 2.
    assert sorted(d["attempt_count"] for d in deliveries)[-1] == 2
