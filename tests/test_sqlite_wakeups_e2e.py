"""Wake-ups across processes on one SQLite database: a web process (`serve --no-workers`) and a
worker, two processes sharing one data directory, as the Procfile runs them on one host.

The worker is told to look for work it was not woken for only every 30 s. Jobs submitted to the
web, and the callbacks the web receives for them, are carried out by the worker well within
that: the web's commits woke it (its watch on the WAL file, storage/sqlite/wakeups.py), not its
idle looks. Each job takes at least three such wake-ups (submit, callback, download), so without
the watch they would take minutes.
"""

from __future__ import annotations

import anyio
import httpx
import pytest

from tests.e2e import (
    free_port,
    procfile,
    read_log,
    run_process_type,
    submit_jobs,
    wait_terminal,
    wait_up,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

IDLE_SECONDS = 30  # the worker's idle look: longer than any wait below


async def test_work_committed_by_the_web_wakes_a_worker_in_another_process_on_sqlite(tmp_path, processes):
    types = procfile()
    web_port = free_port()
    web = f"http://127.0.0.1:{web_port}"
    log = tmp_path / "processes.log"
    env = {"FLUXHOOK_PUBLIC_URL": web, "FLUXHOOK_WORKER_IDLE_SECONDS": str(IDLE_SECONDS),
           "FLUXHOOK_LOG_LEVEL": "info", "FLUXHOOK_DATA_DIR": str(tmp_path / "data")}
    processes.append(run_process_type(types["web"], port=web_port, cwd=tmp_path, env=env, log=log))
    await wait_up(f"{web}/healthz", processes[0])
    processes.append(run_process_type(types["worker"], port=free_port(), cwd=tmp_path, env=env, log=log))
    with anyio.fail_after(30):
        while "fluxhook worker ready" not in read_log(log):
            assert processes[1].poll() is None, read_log(log)[-3000:]
            await anyio.sleep(0.1)
    await anyio.sleep(1)  # its first look (at start) is over: from now on it sleeps until woken
    async with httpx.AsyncClient(base_url=web, timeout=10) as client:
        ids = await submit_jobs(client, 3)
        # Submits, callbacks (received by the web) and downloads, all within a third of one
        # idle interval: each commit woke the worker.
        docs = await wait_terminal(client, ids, timeout=IDLE_SECONDS / 3)
    assert {d["status"] for d in docs.values()} == {"succeeded"}, read_log(log)[-3000:]
    assert all(d["completion_source"] == "callback" for d in docs.values()), docs
