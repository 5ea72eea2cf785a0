"""kill -9 between a provider accepting a submit and fluxhook's commit never pays twice.

The worker is killed deterministically at that very point (FLUXHOOK_CRASH_AT=submit.answered:
the provider has created the task and answered; fluxhook has not written it down). The web
process stays up, as in the Procfile topology, so the task's callback can still arrive.
"""

from __future__ import annotations

import signal
from collections import Counter
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

JOBS = 3
TASK_OUTCOMES = {"unknown", "accepted", "adopted", "orphaned"}  # attempts that may own a task


async def crash_the_worker_after_the_provider_answers(
    tmp_path: Path, sim_config: SimulatorConfig, *, at: str = "submit.answered", **env: str
) -> tuple[dict[str, dict], dict[str, dict], list[str]]:
    """Jobs submitted by a worker that dies at crash point `at`, then finished by a new worker.
    Returns the final job documents, the simulator's tasks, and the ids of the jobs whose submit
    answer the crash lost."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "fluxhook.log"
    async with serve(create_simulator_app(sim_config)) as provider_url, httpx.AsyncClient(
        base_url=base, timeout=10
    ) as client:
        settings = fluxhook_env(tmp_path / "data", base, provider_url, FLUXHOOK_TASK_LEASE_SECONDS="2",
                                FLUXHOOK_LOG_LEVEL="info", **env)
        web = run_fluxhook(["serve", "--port", str(port), "--no-workers"], settings, log)
        worker = None
        try:
            await wait_up(f"{base}/healthz", web)
            ids = await submit_jobs(client, JOBS)
            # One submit at a time, so the crash lands after exactly one provider answer.
            worker = run_fluxhook(["worker"], {**settings, "FLUXHOOK_CRASH_AT": at,
                                               "FLUXHOOK_WORKER_CONCURRENCY": "1"}, log)
            with anyio.fail_after(30):  # the simulator answers from this event loop: never block it
                while worker.poll() is None:
                    await anyio.sleep(0.05)
            assert worker.returncode == -signal.SIGKILL, log.read_text()[-2000:]
            lost = []
            for job_id in ids:
                doc = (await client.get(f"/v1/jobs/{job_id}")).json()
                if any(a["outcome"] == "unknown" for a in doc["attempts"]):
                    lost.append(job_id)
            tasks_at_crash = await simulator_tasks(provider_url)
            sent = 1 if at == "submit.answered" else 0
            assert len(lost) == 1 and len(tasks_at_crash) == sent, "the crash did not land where meant"

            worker = run_fluxhook(["worker"], settings, log)  # no crash point this time
            final = await wait_terminal(client, ids, timeout=60)
            assert {d["status"] for d in final.values()} == {"succeeded"}, log.read_text()[-3000:]
            tasks = await simulator_tasks(provider_url)
            await assert_outputs_match_simulator(client, final, tasks)
            return final, tasks, lost
        finally:
            for process in (web, worker):
                if process is not None:
                    process.kill()
                    process.wait(timeout=10)


def tasks_by_prompt(tasks: dict[str, dict]) -> Counter[str]:
    return Counter(task["prompt"] for task in tasks.values())


async def test_crash_after_the_provider_answered_adopts_the_task_its_callback_names(tmp_path: Path):
    # Callbacks are retried every 0.5 s, so the one sent while no worker runs still arrives.
    config = SimulatorConfig(latency_s=(0.5, 1.0), callback_retry_delays_s=(0.5,) * 20, seed=11)
    final, tasks, lost = await crash_the_worker_after_the_provider_answers(
        tmp_path, config, FLUXHOOK_ADOPT_WINDOW_SECONDS="600")

    # Exactly once at the provider: one task per job, and each job completed with its own.
    assert len(tasks) == JOBS
    assert set(tasks_by_prompt(tasks).values()) == {1}
    for doc in final.values():
        task = tasks[doc["provider_job_id"]]
        assert task["prompt"] == doc["input"]["prompt"]
        outcomes = [a["outcome"] for a in doc["attempts"]]
        assert outcomes == (["adopted"] if doc["id"] in lost else ["accepted"]), doc["attempts"]
        assert doc["attempts"][0]["provider_job_id"] == doc["provider_job_id"]
        assert doc["completion_source"] == "callback"


async def test_crash_after_the_provider_answered_with_the_callback_dropped_still_completes(tmp_path: Path):
    config = SimulatorConfig(latency_s=(0.3, 0.6), callback_drop_rate=1.0, seed=12)
    final, tasks, lost = await crash_the_worker_after_the_provider_answers(
        tmp_path, config, FLUXHOOK_ADOPT_WINDOW_SECONDS="2")

    per_prompt = tasks_by_prompt(tasks)
    for doc in final.values():
        owning = [a for a in doc["attempts"] if a["outcome"] in TASK_OUTCOMES]
        # Every provider task this job caused is in its attempts.
        assert len(owning) == per_prompt[doc["input"]["prompt"]], (doc["attempts"], per_prompt)
        assert doc["provider_job_id"] in tasks
        assert tasks[doc["provider_job_id"]]["prompt"] == doc["input"]["prompt"]
        if doc["id"] in lost:
            # Nothing was heard within the window: submitted again, the lost one kept as unknown.
            assert [a["outcome"] for a in doc["attempts"]] == ["unknown", "accepted"]
            assert per_prompt[doc["input"]["prompt"]] == 2


async def test_crash_before_the_request_went_out_submits_once_after_the_window(tmp_path: Path):
    config = SimulatorConfig(latency_s=(0.3, 0.6), seed=13)
    final, tasks, lost = await crash_the_worker_after_the_provider_answers(
        tmp_path, config, at="submit.before_send", FLUXHOOK_ADOPT_WINDOW_SECONDS="2")

    assert len(tasks) == JOBS and set(tasks_by_prompt(tasks).values()) == {1}
    [doc] = [final[job_id] for job_id in lost]
    assert [a["outcome"] for a in doc["attempts"]] == ["unknown", "accepted"]
