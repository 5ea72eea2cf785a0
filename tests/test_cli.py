"""The process entry points really work: `simulator`, `serve --no-workers` + `worker`, `tick`."""

from __future__ import annotations

import subprocess

import anyio
import httpx
import pytest

from tests.e2e import (
    fluxhook_env,
    free_port,
    run_fluxhook,
    simulator_tasks,
    submit_jobs,
    wait_terminal,
    wait_up,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_web_and_worker_processes_finish_jobs_against_the_simulator_process(tmp_path, processes):
    sim_port, web_port = free_port(), free_port()
    provider, base = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{web_port}"
    log = tmp_path / "processes.log"
    processes.append(
        run_fluxhook(
            ["simulator", "--port", str(sim_port)],
            {"FLUXHOOK_SIM_CALLBACK_DROP_RATE": "0.5", "FLUXHOOK_SIM_SEED": "3"},
            log,
        )
    )
    env = fluxhook_env(tmp_path / "data", base, provider)
    processes.append(run_fluxhook(["serve", "--no-workers", "--port", str(web_port)], env, log))
    await wait_up(f"{provider}/_sim/config")
    await wait_up(f"{base}/healthz")
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        ids = await submit_jobs(client, 6)
        await anyio.sleep(0.5)
        queued = [(await client.get(f"/v1/jobs/{j}")).json()["status"] for j in ids]
        assert set(queued) == {"queued"}  # the web process alone submits nothing
        processes.append(run_fluxhook(["worker"], env, log))
        docs = await wait_terminal(client, ids, timeout=60)
    assert {d["status"] for d in docs.values()} == {"succeeded"}, log.read_text()[-2000:]
    assert len(await simulator_tasks(provider)) == 6


async def test_tick_run_like_cron_finishes_jobs_and_exits(tmp_path, processes):
    sim_port, web_port = free_port(), free_port()
    provider, base = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{web_port}"
    log = tmp_path / "processes.log"
    processes.append(run_fluxhook(["simulator", "--port", str(sim_port)], {"FLUXHOOK_SIM_SEED": "4"}, log))
    env = fluxhook_env(tmp_path / "data", base, provider)
    processes.append(run_fluxhook(["serve", "--no-workers", "--port", str(web_port)], env, log))
    await wait_up(f"{provider}/_sim/config")
    await wait_up(f"{base}/healthz")
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        ids = await submit_jobs(client, 4)
        ticks = 0
        with anyio.fail_after(60):
            while True:
                tick = run_fluxhook(["tick"], env, log)
                assert await anyio.to_thread.run_sync(tick.wait) == 0
                ticks += 1
                docs = [(await client.get(f"/v1/jobs/{j}")).json() for j in ids]
                if all(d["status"] == "succeeded" for d in docs):
                    break
                await anyio.sleep(0.5)
    assert ticks >= 2  # one tick submits; callbacks and a later tick's downloads finish
    assert all(d["outputs"] for d in docs)
