"""The Procfile, run as written by a Procfile runner (each process type with its own PORT), works.

Each line runs through `sh -c` with a PORT of its own, as honcho and foreman run it (honcho would
be a dependency for what `sh -c` and an environment variable already do). Nothing is configured
but what each test says: with no provider key the simulator is mounted in the web process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from service.ids import new_job_id, new_webhook_secret
from service.rules import JOB_RULES
from storage import open_database, sqlite_url
from storage.records import NewJob
from tests.e2e import (
    BACKEND_ENV,
    free_port,
    procfile,
    read_log,
    run_process_type,
    submit_jobs,
    wait_terminal,
    wait_up,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]

JOBS = 12


def test_the_procfile_has_a_web_and_a_worker_process_type():
    types = procfile()
    assert set(types) == {"web", "worker"}
    assert "$PORT" in types["web"] or "${PORT" in types["web"]


async def assert_every_job_finished_by_callback_with_outputs_on_the_web(
    client: httpx.AsyncClient, web: str, ids: list[str], log: Path
) -> None:
    docs = await wait_terminal(client, ids, timeout=60)
    assert {d["status"] for d in docs.values()} == {"succeeded"}, read_log(log)[-3000:]
    for doc in docs.values():
        # The provider called back (to the web's port, the only one serving callbacks), so the
        # fallback poller never had to ask.
        assert doc["callbacks"] > 0, doc
        assert doc["completion_source"] == "callback", doc
        assert doc["polls"] == 0, doc
        assert doc["outputs"]
        for output in doc["outputs"]:
            assert output["url"].startswith(f"{web}/v1/jobs/{doc['id']}/outputs/"), output
            served = await client.get(output["url"])
            assert served.status_code == 200
            assert served.headers["content-type"] == output["content_type"]


@pytest.mark.parametrize("public_url", [False, True], ids=["no-public-url", "public-url-set"])
async def test_web_and_worker_on_their_own_ports_finish_every_job_by_callback(
    tmp_path, processes, public_url
):
    types = procfile()
    web_port, worker_port = free_port(), free_port()
    web = f"http://127.0.0.1:{web_port}"
    env = {**BACKEND_ENV, "FLUXHOOK_PUBLIC_URL": web} if public_url else {**BACKEND_ENV}
    log = tmp_path / "procfile.log"
    for name, port in (("web", web_port), ("worker", worker_port)):  # started together, as a runner does
        processes.append(run_process_type(types[name], port=port, cwd=tmp_path, env=env, log=log))
    await wait_up(f"{web}/healthz", processes[0])
    async with httpx.AsyncClient(base_url=web, timeout=10) as client:
        ids = await submit_jobs(client, JOBS)
        await assert_every_job_finished_by_callback_with_outputs_on_the_web(client, web, ids, log)
    assert processes[1].poll() is None, "the worker exited"


async def open_test_database(data_dir: Path) -> Any:
    """The database the processes use: the test's PostgreSQL one, or the data dir's SQLite file."""
    url = BACKEND_ENV.get("FLUXHOOK_DATABASE_URL") or sqlite_url(data_dir / "fluxhook.db")
    return await open_database(url, rules=JOB_RULES, pool_size=1)


async def queue_jobs(data_dir: Path, count: int) -> list[str]:
    """Jobs written straight to the database: queued while no web process runs."""
    store = await open_test_database(data_dir)
    try:
        now = time.time_ns() // 1_000_000
        ids = []
        for n in range(count):
            job_id = new_job_id(now)
            new = NewJob(id=job_id, provider="bfl", model="flux-pro-1.1", metadata={},
                         input={"prompt": f"queued job {n}", "width": 256, "height": 256},
                         webhook_secret=new_webhook_secret(), idempotency_key=None, request_hash=None,
                         deadline_at=now + 900_000)
            await store.jobs.create_job(new, now=now)
            ids.append(job_id)
        return ids
    finally:
        await store.close()


async def submit_attempts(data_dir: Path, ids: list[str]) -> list[int]:
    store = await open_test_database(data_dir)
    try:
        return [task.attempts for job_id in ids for task in await store.tasks.get_tasks(job_id)]
    finally:
        await store.close()


async def test_a_worker_with_no_address_to_use_waits_naming_the_setting_and_submits_nothing(
    tmp_path, processes
):
    types = procfile()
    log = tmp_path / "procfile.log"
    ids = await queue_jobs(tmp_path / "data", 3)
    processes.append(run_process_type(types["worker"], port=free_port(), cwd=tmp_path,
                                      env={**BACKEND_ENV}, log=log))
    with anyio.fail_after(30):
        while "FLUXHOOK_PUBLIC_URL is not set" not in read_log(log):
            assert processes[0].poll() is None, read_log(log)
            await anyio.sleep(0.1)
    assert await submit_attempts(tmp_path / "data", ids) == [0, 0, 0]

    web_port = free_port()
    web = f"http://127.0.0.1:{web_port}"
    processes.append(run_process_type(types["web"], port=web_port, cwd=tmp_path,
                                      env={**BACKEND_ENV}, log=log))
    await wait_up(f"{web}/healthz", processes[1])
    async with httpx.AsyncClient(base_url=web, timeout=10) as client:
        # The waiting worker takes the address the web process announced and submits the queued
        # jobs with callbacks to it: had it submitted earlier, no callback could have arrived.
        await assert_every_job_finished_by_callback_with_outputs_on_the_web(client, web, ids, log)


async def test_tick_with_no_address_to_use_exits_naming_the_setting(tmp_path):
    tick = run_process_type("fluxhook tick", port=free_port(), cwd=tmp_path, env={**BACKEND_ENV},
                            log=tmp_path / "tick.log")
    assert await anyio.to_thread.run_sync(tick.wait) == 2
    assert "FLUXHOOK_PUBLIC_URL is not set" in read_log(tmp_path / "tick.log")
