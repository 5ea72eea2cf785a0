"""Wake-ups across processes on PostgreSQL: a web process (`serve --no-workers`) and a worker,
two processes on one database, as they would run on two hosts.

The worker is told to look for work it was not woken for only every 30 s. Jobs submitted to the
web, and the callbacks the web receives for them, are carried out by the worker within 10 s:
the commits woke it (LISTEN/NOTIFY), not its idle looks. Without the notifications (the wake-up
triggers dropped), the idle looks still find every job: the safety net.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import httpx
import psycopg
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


WAKE_TRIGGERS = (("fluxhook_wake_tasks_written", "tasks"), ("fluxhook_wake_tasks_ended", "tasks"),
                 ("fluxhook_wake_deliveries", "deliveries"), ("fluxhook_wake_events", "events"),
                 ("fluxhook_wake_inbox", "inbox"))


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
        while "fluxhook worker ready" not in read_log(log):
            assert processes[1].poll() is None, read_log(log)[-3000:]
            await anyio.sleep(0.1)
    await anyio.sleep(1)  # its first look (at start) is over: from now on it sleeps until woken
    return web, log


async def test_work_committed_by_the_web_wakes_a_worker_in_another_process_at_once(
    tmp_path, processes, postgres_url
):
    web, log = await start_web_and_worker(tmp_path, processes, postgres_url, IDLE_SECONDS)
    async with httpx.AsyncClient(base_url=web, timeout=10) as client:
        ids = await submit_jobs(client, 3)
        # Submits, callbacks (received by the web, applied by the worker) and downloads, all
        # within a third of one idle interval: each commit woke the worker. The web's applier
        # looks only every idle interval too: the worker applied the callbacks.
        docs = await wait_terminal(client, ids, timeout=IDLE_SECONDS / 3)
    assert {d["status"] for d in docs.values()} == {"succeeded"}, read_log(log)[-3000:]
    assert all(d["completion_source"] == "callback" for d in docs.values()), docs


async def test_without_notifications_the_idle_looks_still_find_every_job(tmp_path, processes, postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for trigger, table in WAKE_TRIGGERS:
            conn.execute(f"DROP TRIGGER {trigger} ON {table}")  # type: ignore[arg-type]
    web, log = await start_web_and_worker(tmp_path, processes, postgres_url, idle=0.5)
    async with httpx.AsyncClient(base_url=web, timeout=10) as client:
        ids = await submit_jobs(client, 3)
        docs = await wait_terminal(client, ids, timeout=60)
    assert {d["status"] for d in docs.values()} == {"succeeded"}, read_log(log)[-3000:]
