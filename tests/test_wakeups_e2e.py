"""Wake-ups across processes on PostgreSQL: a web process (`serve --no-workers`) and a worker,
two processes on one database, as they would run on two hosts.

The worker is told to look for work it was not woken for only every 30 s. Jobs submitted to the
web, and the callbacks the web receives for them, are carried out by the worker within 10 s:
the commits woke it (LISTEN/NOTIFY), not its idle looks. Without the notifications (the wake-up
triggers dropped), the idle looks still find every job: the safety net.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import psycopg
import pytest

from tests.e2e import (
    free_port,
    procfile,
    run_process_type,
    stop_process_type,
    submit_jobs,
    wait_terminal,
    wait_up,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

IDLE_SECONDS = 30  # the worker's idle look: longer than any wait below


WAKE_TRIGGERS = (("fluxhook_wake_tasks_written", "tasks"), ("fluxhook_wake_tasks_ended", "tasks"),
                 ("fluxhook_wake_deliveries", "deliveries"), ("fluxhook_wake_events", "events"))


def read(log: Path) -> str:
    return log.read_text() if log.exists() else ""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop_process_type(process)


async def start_web_and_worker(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], database_url: str, idle: float
) -> tuple[str, Path]:
    types = procfile()
    web_port = free_port()
    web = f"http://127.0.0.1:{web_port}"
    log = tmp_path / "processes.log"
    env = {"FLUXHOOK_DATABASE_URL": database_url, "FLUXHOOK_PUBLIC_URL": web,
           "FLUXHOOK_WORKER_IDLE_SECONDS": str(idle), "FLUXHOOK_LOG_LEVEL": "info",
           "FLUXHOOK_DATA_DIR": str(tmp_path / "data")}
    processes.append(run_process_type(types["web"], port=web_port, cwd=tmp_path, env=env, log=log))
    await wait_up(f"{web}/healthz", processes[0])
    processes.append(run_process_type(types["worker"], port=free_port(), cwd=tmp_path, env=env, log=log))
    with anyio.fail_after(30):
        while "fluxhook worker ready" not in read(log):
            assert processes[1].poll() is None, read(log)[-3000:]
            await anyio.sleep(0.1)
    await anyio.sleep(1)  # its first look (at start) is over: from now on it sleeps until woken
    return web, log


async def test_work_committed_by_the_web_wakes_a_worker_in_another_process_at_once(
    tmp_path, processes, postgres_url
):
    web, log = await start_web_and_worker(tmp_path, processes, postgres_url, IDLE_SECONDS)
    async with httpx.AsyncClient(base_url=web, timeout=10) as client:
        ids = await submit_jobs(client, 3)
        # Submits, callbacks (received by the web) and downloads, all within a third of one
        # idle interval: each commit woke the worker.
        docs = await wait_terminal(client, ids, timeout=IDLE_SECONDS / 3)
    assert {d["status"] for d in docs.values()} == {"succeeded"}, read(log)[-3000:]
    assert all(d["completion_source"] == "callback" for d in docs.values()), docs


async def test_without_notifications_the_idle_looks_still_find_every_job(tmp_path, processes, postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for trigger, table in WAKE_TRIGGERS:
            conn.execute(f"DROP TRIGGER {trigger} ON {table}")  # type: ignore[arg-type]
    web, log = await start_web_and_worker(tmp_path, processes, postgres_url, idle=0.5)
    async with httpx.AsyncClient(base_url=web, timeout=10) as client:
        ids = await submit_jobs(client, 3)
        docs = await wait_terminal(client, ids, timeout=60)
    assert {d["status"] for d in docs.values()} == {"succeeded"}, read(log)[-3000:]


async def test_two_web_hosts_and_two_workers_one_killed_finish_every_job_once(
    tmp_path, postgres_url, s3_endpoint
):
    """Four processes sharing nothing but PostgreSQL and an S3 bucket (each its own data
    directory), as on four hosts: jobs submitted to either web host all finish, each submitted
    to the provider once, though one worker is killed (SIGKILL) with work in hand."""
    from service.loopback import serve
    from service.simulator import SimulatorConfig, create_simulator_app
    from tests.conftest import new_bucket, s3_env
    from tests.e2e import assert_outputs_match_simulator, fluxhook_env, run_fluxhook, simulator_tasks

    simulator = create_simulator_app(SimulatorConfig(latency_s=(0.3, 1.0), download_delay_s=1.0, seed=12))
    ports = [free_port(), free_port()]
    webs = [f"http://127.0.0.1:{port}" for port in ports]
    log = tmp_path / "hosts.log"
    shared = {"FLUXHOOK_DATABASE_URL": postgres_url, "FLUXHOOK_TASK_LEASE_SECONDS": "2",
              **s3_env(s3_endpoint, new_bucket(s3_endpoint))}
    started: list[subprocess.Popen[bytes]] = []
    async with serve(simulator) as provider_url:
        def env(host: str) -> dict[str, str]:  # the load balancer's address: the first web's
            return fluxhook_env(tmp_path / host, webs[0], provider_url, **shared)

        try:
            for n, port in enumerate(ports):
                web_args = ["serve", "--port", str(port), "--no-workers"]
                started.append(run_fluxhook(web_args, env(f"web{n}"), log))
            for n in range(2):
                started.append(run_fluxhook(["worker"], env(f"worker{n}"), log))
            for web, process in zip(webs, started, strict=False):
                await wait_up(f"{web}/healthz", process)
            async with httpx.AsyncClient(base_url=webs[0], timeout=10) as first, \
                    httpx.AsyncClient(base_url=webs[1], timeout=10) as second:
                ids = await submit_jobs(first, 6) + await submit_jobs(second, 6)
                with anyio.fail_after(30):  # the first worker is killed while jobs are in flight
                    while not (await simulator_tasks(provider_url)):
                        await anyio.sleep(0.05)
                started[2].kill()
                final = await wait_terminal(second, ids, timeout=60)
                assert {d["status"] for d in final.values()} == {"succeeded"}, read(log)[-3000:]
                await assert_outputs_match_simulator(second, final, await simulator_tasks(provider_url))
            assert len(await simulator_tasks(provider_url)) == len(ids)  # none submitted twice
        finally:
            for process in started:
                process.kill()
                process.wait(timeout=10)
