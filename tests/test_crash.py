"""kill -9 at a bad moment loses nothing: after a restart every in-flight job finishes."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import anyio
import httpx
import pytest

from service.loopback import serve
from service.simulator import SimulatorConfig, create_simulator_app
from tests.e2e import (
    assert_outputs_match_simulator,
    fluxhook_env,
    free_port,
    run_fluxhook,
    simulator_tasks,
    submit_jobs,
    wait_terminal,
    wait_up,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]


async def test_sigkill_with_callbacks_acknowledged_and_images_unstored_loses_nothing(tmp_path: Path):
    # Downloads are held for 3 s, so callbacks are acknowledged well before images are stored.
    simulator = create_simulator_app(SimulatorConfig(latency_s=(0.3, 1.0), download_delay_s=3.0, seed=5))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "fluxhook.log"
    async with serve(simulator) as provider_url, httpx.AsyncClient(base_url=base, timeout=10) as client:
        env = fluxhook_env(tmp_path / "data", base, provider_url, FLUXHOOK_TASK_LEASE_SECONDS="2")
        process = run_fluxhook(["serve", "--port", str(port)], env, log)
        try:
            await wait_up(f"{base}/healthz", process)
            ids = await submit_jobs(client, 12)

            # Wait for the bad moment: callbacks acknowledged, their images not yet stored.
            with anyio.fail_after(30):
                while True:
                    docs = [(await client.get(f"/v1/jobs/{j}")).json() for j in ids]
                    acked_unstored = [
                        d
                        for d in docs
                        if d["completion_source"] == "callback"
                        and d["status"] == "running"
                        and not d["outputs"]
                    ]
                    if len(acked_unstored) >= 4:
                        break
                    await anyio.sleep(0.05)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            assert all(d["status"] != "succeeded" for d in acked_unstored)
            tasks = await simulator_tasks(provider_url)
            assert all(tasks[d["provider_job_id"]]["callbacks_acknowledged"] >= 1 for d in acked_unstored)

            await client.patch(f"{provider_url}/_sim/config", json={"download_delay_s": 0})
            process = run_fluxhook(["serve", "--port", str(port)], env, log)
            await wait_up(f"{base}/healthz", process)
            final = await wait_terminal(client, ids, timeout=60)

            assert {d["status"] for d in final.values()} == {"succeeded"}, log.read_text()[-3000:]
            await assert_outputs_match_simulator(client, final, await simulator_tasks(provider_url))
            # The provider was asked once per job: nothing was submitted twice after the crash.
            assert len(await simulator_tasks(provider_url)) == 12
        finally:
            process.kill()
            process.wait(timeout=10)


async def test_sigkill_with_deliveries_pending_delivers_them_all_after_restart(tmp_path: Path):
    """The receiver is down while jobs finish; fluxhook is killed with every delivery pending;
    after both come back, every event reaches the receiver."""
    from standardwebhooks import Webhook

    from tests.receivers import Receiver

    simulator = create_simulator_app(SimulatorConfig(latency_s=(0.2, 0.5), seed=8))
    port = free_port()
    receiver_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there yet: connection refused
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "fluxhook.log"
    receiver = Receiver(fetch_outputs=False)
    async with serve(simulator) as provider_url, httpx.AsyncClient(base_url=base, timeout=10) as client:
        env = fluxhook_env(
            tmp_path / "data",
            base,
            provider_url,
            FLUXHOOK_TASK_LEASE_SECONDS="2",
            FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS="loopback",
            FLUXHOOK_WEBHOOK_TIMEOUT_SECONDS="1",
            FLUXHOOK_WEBHOOK_RETRY_SCHEDULE=",".join(["0", *["1"] * 60]),
        )
        process = run_fluxhook(["serve", "--port", str(port)], env, log)
        try:
            await wait_up(f"{base}/healthz", process)
            sub = (await client.post("/v1/subscriptions", json={"url": f"{receiver_url}/hook"})).json()
            ids = await submit_jobs(client, 5)
            await wait_terminal(client, ids, timeout=30)
            pending = (await client.get(f"/v1/subscriptions/{sub['id']}/deliveries")).json()["data"]
            assert pending and all(d["status"] == "pending" for d in pending)
            assert all(d["attempt_count"] >= 1 and d["last_error"] for d in pending)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)

            rebound = socket.socket()
            rebound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            rebound.bind(("127.0.0.1", int(receiver_url.rsplit(":", 1)[1])))
            rebound.listen(64)
            async with serve(receiver.app(), rebound):
                process = run_fluxhook(["serve", "--port", str(port)], env, log)
                await wait_up(f"{base}/healthz", process)
                expected = {d["event_id"] for d in pending}
                with anyio.fail_after(30):
                    while not expected <= set(receiver.accepted_ids()):
                        await anyio.sleep(0.1)
                # The receiver answers before fluxhook commits the attempt's outcome: give that
                # commit a moment (a delivery that stays pending still fails the assert below).
                with anyio.move_on_after(10):
                    while True:
                        final = (await client.get(f"/v1/subscriptions/{sub['id']}/deliveries")).json()["data"]
                        if {d["status"] for d in final} == {"delivered"}:
                            break
                        await anyio.sleep(0.1)
        finally:
            process.kill()
            process.wait(timeout=10)

    assert {d["status"] for d in final} == {"delivered"}
    assert len(receiver.accepted_ids()) == len(set(receiver.accepted_ids()))
    for got in receiver.received:
        Webhook(sub["secret"]).verify(
            got.body,
            {
                "webhook-id": got.webhook_id,
                "webhook-timestamp": got.timestamp,
                "webhook-signature": got.signature,
            },
        )
