"""kill -9 after a callback is recorded and before it is applied, or in the middle of applying it,
loses nothing and doubles nothing: whichever process comes back applies it exactly once.

The process kills itself deterministically at the named point (FLUXHOOK_CRASH_AT):
`callback.recorded` right after the callback's commit, before its answer and before it is
applied; `callback.applying` inside the transaction applying it, after its writes. The simulator
sends each callback once (no retries) and the fallback poll is an hour away, so only the recorded
callback can move the job. Exactly once: one callback row, an empty inbox, and the job's events
are each status once (a notification is made per event, so none is sent twice).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from service.loopback import serve
from service.rules import JOB_RULES
from service.simulator import SimulatorConfig, create_simulator_app
from storage import open_database, sqlite_url
from storage.records import JobRecord
from tests.e2e import fluxhook_env, free_port, read_log, run_fluxhook, submit_jobs, wait_up

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]

TICK_TOKEN = "tick-token-for-tests"
APPLIED = ["job.submitted", "job.running"]  # the callback (BFL "Ready") makes the job running
FINISHED = [*APPLIED, "job.succeeded"]  # ... and its download, succeeded


@asynccontextmanager
async def store(backend_env: dict[str, str], data_dir: Path) -> AsyncIterator[Any]:
    url = backend_env.get("FLUXHOOK_DATABASE_URL") or sqlite_url(data_dir / "fluxhook.db")
    database = await open_database(url, rules=JOB_RULES, pool_size=1)
    try:
        yield database
    finally:
        await database.close()


async def event_types(database: Any, job_id: str) -> list[str]:
    rows = await database.query(lambda conn: conn.execute(
        "SELECT type FROM events WHERE job_id = ? ORDER BY seq", (job_id,)).fetchall())
    return [row[0] for row in rows]


async def callback_rows(database: Any, job_id: str) -> int:
    row = await database.query(lambda conn: conn.execute(
        "SELECT count(*) FROM callbacks WHERE job_id = ?", (job_id,)).fetchone())
    return int(row[0])


async def crash_on_the_callback(
    tmp_path: Path, backend_env: dict[str, str], client: httpx.AsyncClient, env: dict[str, str],
    port: int, at: str,
) -> str:
    """Submit one job to a `fluxhook serve` that kills itself at `at` when its callback comes;
    the job's id, once the crash is checked to have landed between recording and applying."""
    log = tmp_path / "fluxhook.log"
    # The idle look far away: only the callback itself wakes the applier, after the crash point.
    first = run_fluxhook(["serve", "--port", str(port)],
                         {**env, "FLUXHOOK_CRASH_AT": at, "FLUXHOOK_WORKER_IDLE_SECONDS": "30"}, log)
    try:
        await wait_up(f"http://127.0.0.1:{port}/healthz", first)
        [job_id] = await submit_jobs(client, 1)
        with anyio.fail_after(30):
            while first.poll() is None:
                await anyio.sleep(0.05)
        assert first.returncode == -signal.SIGKILL, read_log(log)
    finally:
        first.kill()
        first.wait(timeout=10)
    async with store(backend_env, tmp_path / "data") as database:
        job: JobRecord = await database.jobs.get_job(job_id)
        assert (job.callback_count, job.output_urls) == (1, ()), "the crash did not land where meant"
        assert await database.jobs.pending_callbacks() == 1
        assert await event_types(database, job_id) == ["job.submitted"]
    return job_id


async def wait_for(
    backend_env: dict[str, str], data_dir: Path, job_id: str, events: list[str]
) -> tuple[JobRecord, list[str], int, int]:
    async with store(backend_env, data_dir) as database:
        with anyio.fail_after(30):
            while await event_types(database, job_id) != events:
                await anyio.sleep(0.1)
        await anyio.sleep(0.5)  # time for anything applied twice to show
        return (await database.jobs.get_job(job_id), await event_types(database, job_id),
                await callback_rows(database, job_id), await database.jobs.pending_callbacks())


def simulator() -> Any:
    return create_simulator_app(SimulatorConfig(latency_s=(0.2, 0.4), callback_retry_delays_s=(), seed=17))


@pytest.mark.parametrize("at", ["callback.recorded", "callback.applying"])
@pytest.mark.parametrize(("then", "events"), [
    ("serve", FINISHED),
    ("serve --no-workers", APPLIED),  # a web process applies what it recorded; no download
    ("worker", FINISHED),
])
async def test_a_callback_caught_by_a_crash_is_applied_once_by_the_next_process(
    tmp_path: Path, backend_env: dict[str, str], at: str, then: str, events: list[str]
):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with serve(simulator()) as provider_url, httpx.AsyncClient(base_url=base, timeout=10) as client:
        env = fluxhook_env(tmp_path / "data", base, provider_url, FLUXHOOK_POLL_GRACE_SECONDS="3600")
        job_id = await crash_on_the_callback(tmp_path, backend_env, client, env, port, at)

        args = then.split() + (["--port", str(port)] if then.startswith("serve") else [])
        second = run_fluxhook(args, env, tmp_path / "fluxhook.log")
        try:
            job, seen, callbacks, pending = await wait_for(backend_env, tmp_path / "data", job_id, events)
        finally:
            second.kill()
            second.wait(timeout=10)

    assert seen == events
    assert (callbacks, pending) == (1, 0)
    assert job.completion_source == "callback" and job.output_urls


@pytest.mark.parametrize("at", ["callback.recorded", "callback.applying"])
@pytest.mark.parametrize("tick", ["fluxhook tick", "POST /v1/tick"])
async def test_in_serverless_mode_the_tick_applies_a_callback_a_crash_left_recorded(
    tmp_path: Path, backend_env: dict[str, str], at: str, tick: str
):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "fluxhook.log"
    async with serve(simulator()) as provider_url, httpx.AsyncClient(base_url=base, timeout=10) as client:
        env = fluxhook_env(tmp_path / "data", base, provider_url, FLUXHOOK_POLL_GRACE_SECONDS="3600",
                           FLUXHOOK_MODE="serverless", FLUXHOOK_TICK_TOKEN=TICK_TOKEN)
        job_id = await crash_on_the_callback(tmp_path, backend_env, client, env, port, at)

        if tick == "fluxhook tick":
            ticked = run_fluxhook(["tick"], env, log)
            with anyio.fail_after(60):  # the simulator answers from this event loop: never block it
                while ticked.poll() is None:
                    await anyio.sleep(0.05)
            assert ticked.returncode == 0, read_log(log)
        else:
            second = run_fluxhook(["serve", "--port", str(port)], env, log)
            try:
                await wait_up(f"{base}/healthz", second)
                response = await client.post("/v1/tick", headers={"Authorization": f"Bearer {TICK_TOKEN}"})
                assert response.status_code == 200, response.text
            finally:
                second.kill()
                second.wait(timeout=10)
        job, seen, callbacks, pending = await wait_for(backend_env, tmp_path / "data", job_id, FINISHED)

    assert seen == FINISHED
    assert (callbacks, pending) == (1, 0)
    assert job.status == "succeeded" and job.completion_source == "callback"


async def test_a_download_leased_in_the_applying_transaction_and_caught_by_a_crash_runs_once_after_its_lease(
    tmp_path: Path, backend_env: dict[str, str]
):
    """`download.leased`: the callback applied and its download leased for this process's worker
    in that same commit, the process killed before the worker starts it. The next process finds
    the task held until the lease runs out, then claims and runs it: the job succeeds once."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "fluxhook.log"
    async with serve(simulator()) as provider_url, httpx.AsyncClient(base_url=base, timeout=10) as client:
        env = fluxhook_env(tmp_path / "data", base, provider_url, FLUXHOOK_POLL_GRACE_SECONDS="3600",
                           FLUXHOOK_TASK_LEASE_SECONDS="2")
        crashing = {**env, "FLUXHOOK_CRASH_AT": "download.leased"}
        first = run_fluxhook(["serve", "--port", str(port)], crashing, log)
        try:
            await wait_up(f"{base}/healthz", first)
            [job_id] = await submit_jobs(client, 1)
            with anyio.fail_after(30):
                while first.poll() is None:
                    await anyio.sleep(0.05)
            assert first.returncode == -signal.SIGKILL, read_log(log)
            assert "killing this process at download.leased" in read_log(log)
        finally:
            first.kill()
            first.wait(timeout=10)
        async with store(backend_env, tmp_path / "data") as database:
            job = await database.jobs.get_job(job_id)
            assert job.output_urls and await database.jobs.pending_callbacks() == 0  # applied
            assert await event_types(database, job_id) == APPLIED
            [task] = await database.tasks.get_tasks(job_id)
            assert (task.kind, task.attempts) == ("fetch", 1) and task.lease_until > job.updated_at

        second = run_fluxhook(["serve", "--port", str(port)], env, log)
        try:
            job, seen, callbacks, pending = await wait_for(backend_env, tmp_path / "data", job_id, FINISHED)
            outputs = (await client.get(f"/v1/jobs/{job_id}")).json()["outputs"]
        finally:
            second.kill()
            second.wait(timeout=10)

    assert seen == FINISHED  # job.succeeded once
    assert (callbacks, pending) == (1, 0)
    assert job.status == "succeeded" and job.completion_source == "callback"
    assert len(outputs) == 1
