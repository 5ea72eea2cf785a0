"""End to end over real loopback HTTP: uvicorn serving fluxhook, the simulator as provider."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.loopback import bind_loopback, serve, url_of
from service.settings import Settings
from service.simulator import SimulatorConfig, create_simulator_app
from tests.e2e import (
    assert_outputs_match_simulator,
    fluxhook_env,
    simulator_tasks,
    submit_jobs,
    wait_terminal,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.usefixtures("e2e_backend")]


async def test_fifty_jobs_succeed_with_dropped_and_duplicated_callbacks(tmp_path: Path):
    simulator = create_simulator_app(SimulatorConfig(
        latency_s=(0.3, 1.5), callback_drop_rate=0.3, callback_duplicate_rate=0.1, seed=11))
    async with serve(simulator) as provider_url:
        sock = bind_loopback()
        settings = Settings.from_env(fluxhook_env(tmp_path / "data", url_of(sock), provider_url))
        async with serve(create_app(settings), sock) as base, \
                httpx.AsyncClient(base_url=base, timeout=30) as client:
            ids = await submit_jobs(client, 50)
            await wait_terminal(client, ids, timeout=90)
            tasks = await simulator_tasks(provider_url)
            # Read after the simulator's counts: a duplicate callback may land after the job is
            # terminal, and every callback the simulator saw acknowledged was counted before that.
            docs = {j: (await client.get(f"/v1/jobs/{j}")).json() for j in ids}

            assert {doc["status"] for doc in docs.values()} == {"succeeded"}
            await assert_outputs_match_simulator(client, docs, tasks)

    by_task = {doc["provider_job_id"]: doc for doc in docs.values()}
    dropped = [t for t in tasks.values() if t["fate"]["drop_callback"]]
    duplicated = [t for t in tasks.values() if t["fate"]["duplicate_callback"]
                  and not t["fate"]["drop_callback"]]
    delivered = [t for t in tasks.values() if t["callbacks_acknowledged"] > 0]
    # The fates really were drawn as configured, so both paths were exercised.
    assert len(dropped) >= 8 and len(duplicated) >= 2
    assert all(t["callbacks_acknowledged"] == 2 for t in duplicated)
    # A job whose callback arrived was never polled, and it says the callback completed it.
    for task in delivered:
        assert task["poll_count"] == 0, task["id"]
        assert by_task[task["id"]]["completion_source"] == "callback"
        assert by_task[task["id"]]["polls"] == 0  # fluxhook's own count agrees
        assert by_task[task["id"]]["callbacks"] == task["callbacks_acknowledged"]
    # A job whose callback was dropped was finished by the fallback poller.
    for task in dropped:
        assert task["poll_count"] >= 1
        assert by_task[task["id"]]["completion_source"] == "poll"
        assert by_task[task["id"]]["polls"] == task["poll_count"]
    assert len(delivered) + len(dropped) == 50
