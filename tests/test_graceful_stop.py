"""Graceful stop: on SIGTERM a process stops claiming, lets work in flight finish within the
grace or hands it back, and exits 0; no lease is left to run out, so another process takes the
work at once."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from service.app import open_context
from service.context import WorkContext
from service.ids import new_job_id
from service.jobs import Submitted
from service.loopback import serve
from service.notifier import Notifier
from service.settings import Settings
from service.simulator import SimulatorConfig, create_simulator_app
from service.worker import Worker
from storage.records import NewJob
from tests.conftest import FakeClock
from tests.e2e import BACKEND_ENV, fluxhook_env, free_port, run_fluxhook, submit_jobs, wait_terminal, wait_up
from tests.receivers import Receiver

pytestmark = pytest.mark.anyio

BFL = "https://api.bfl.ai"


class Gate:
    """An HTTP transport whose requests wait until the test opens the gate."""

    def __init__(self, answer: httpx.Response) -> None:
        self.answer = answer
        self.arrived = anyio.Event()
        self.open = anyio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.arrived.set()
        await self.open.wait()
        return self.answer

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def accepted() -> httpx.Response:
    return httpx.Response(200, json={"id": "task-1", "polling_url": f"{BFL}/v1/get_result?id=task-1"})


async def run_until_stopped(
    loop: Worker | Notifier, arrived: anyio.Event, *, then: Callable[[], None]
) -> None:
    """Run `loop`, stop it once its work is in flight, call `then`, and wait for it to return."""
    async with anyio.create_task_group() as group:
        group.start_soon(loop.run)
        with anyio.fail_after(10):
            await arrived.wait()
        loop.stop.set()
        then()


async def test_a_stopped_worker_hands_back_a_task_it_could_not_finish_due_now_and_uncounted(
    make_settings: Callable[..., Settings], make_job_in: Callable[..., Any], clock: FakeClock
):
    gate = Gate(accepted())  # never opened: the submit hangs past the grace
    settings = make_settings(FLUXHOOK_SHUTDOWN_GRACE_SECONDS="0.2")
    async with open_context(settings, transport=gate.transport(), clock=clock) as ctx:
        job = await make_job_in(ctx)
        await run_until_stopped(Worker(ctx), gate.arrived, then=lambda: None)

        (task,) = await ctx.store.tasks.get_tasks(job.id)
        assert (task.kind, task.lease_until, task.attempts) == ("submit", 0, 0)
        # Another worker takes it at once, at the same instant: not after the lease.
        claimed = await ctx.store.tasks.claim_due_tasks(now=clock(), limit=10, lease_ms=600_000)
        assert [t.id for t in claimed] == [task.id]
        assert (await ctx.store.jobs.get_job(job.id)).status == "queued"


async def test_a_stopped_worker_lets_work_finishing_within_the_grace_finish(
    make_settings: Callable[..., Settings], make_job_in: Callable[..., Any], clock: FakeClock
):
    gate = Gate(accepted())
    settings = make_settings(FLUXHOOK_SHUTDOWN_GRACE_SECONDS="30")
    async with open_context(settings, transport=gate.transport(), clock=clock) as ctx:
        job = await make_job_in(ctx)
        await run_until_stopped(Worker(ctx), gate.arrived, then=gate.open.set)

        assert (await ctx.store.jobs.get_job(job.id)).status == "submitted"
        tasks = await ctx.store.tasks.get_tasks(job.id)
        assert [t.kind for t in tasks] == ["poll"]  # the submit ended; nothing handed back
        assert tasks[0].attempts == 0


async def test_a_stopped_worker_claims_nothing_more(
    make_settings: Callable[..., Settings], make_job_in: Callable[..., Any], clock: FakeClock
):
    async with open_context(make_settings(), transport=Gate(accepted()).transport(), clock=clock) as ctx:
        job = await make_job_in(ctx)
        worker = Worker(ctx)
        worker.stop.set()
        assert await worker.run_once() == 0
        with anyio.fail_after(5):
            await worker.run()  # returns at once
        (task,) = await ctx.store.tasks.get_tasks(job.id)
        assert (task.lease_until, task.attempts) == (0, 0)


async def test_a_stopped_notifier_hands_back_a_delivery_cut_off_mid_attempt(
    make_settings: Callable[..., Settings], make_job_in: Callable[..., Any], clock: FakeClock
):
    receiver = Gate(httpx.Response(204))  # never answers
    settings = make_settings(FLUXHOOK_SHUTDOWN_GRACE_SECONDS="0.2")
    async with open_context(settings, notify_transport=receiver.transport(), clock=clock) as ctx:
        job = await make_job_in(ctx, webhook_url="https://receiver.example.com/hook")
        await ctx.store.jobs.record_observation(job.id, Submitted("task-1"), now=clock())
        await run_until_stopped(Notifier(ctx), receiver.arrived, then=lambda: None)

        (delivery, attempts) = (await ctx.store.deliveries.list_deliveries(job_id=job.id))[0]
        assert (delivery.status, delivery.attempts, attempts) == ("pending", 0, [])
        again = await ctx.store.deliveries.claim_due_deliveries(
            now=clock(), limit=10, lease_ms=600_000, busy={}, per_destination=4
        )
        assert [d.id for d in again] == [delivery.id]
        assert again[0].attempt == 1  # the cut-off try was not counted


async def test_handing_back_leaves_a_lease_another_claim_now_holds(
    ctx: WorkContext, make_job: Callable[..., Any], clock: FakeClock
):
    job = await make_job()
    (first,) = await ctx.store.tasks.claim_due_tasks(now=clock(), limit=1, lease_ms=1_000)
    clock.advance(2)  # the first lease ran out and another worker claimed the task
    (second,) = await ctx.store.tasks.claim_due_tasks(now=clock(), limit=1, lease_ms=600_000)

    assert await ctx.store.tasks.release_tasks([(first.id, first.lease_until)]) == 0
    (task,) = await ctx.store.tasks.get_tasks(job.id)
    assert (task.lease_until, task.attempts) == (second.lease_until, 2)
    assert await ctx.store.tasks.release_tasks([(second.id, second.lease_until)]) == 1


@pytest.fixture
def make_job_in() -> Callable[..., Any]:
    async def make(ctx: WorkContext, **fields: Any) -> Any:
        now = ctx.clock()
        new = NewJob(id=new_job_id(now), provider="bfl", model="flux-pro-1.1",
                     input={"prompt": "a red fox", "width": 512, "height": 512}, metadata={},
                     webhook_secret=None, idempotency_key=None, request_hash=None,
                     deadline_at=now + 900_000, **fields)
        job, _ = await ctx.store.jobs.create_job(new, now=now)
        return job

    return make


# End to end: real processes, SIGTERM ------------------------------------------------------------


def connect(db: Path) -> Any:
    """The processes' database: the test's PostgreSQL one (e2e_backend), or the SQLite file."""
    url = BACKEND_ENV.get("FLUXHOOK_DATABASE_URL")
    return psycopg.connect(url, autocommit=True) if url else sqlite3.connect(db)


def leases_held(db: Path) -> list[tuple[str, Any]]:
    """Every task and delivery whose lease has not been handed back or ended."""
    with connect(db) as conn:
        rows = conn.execute(
            "SELECT 'task', kind FROM tasks WHERE lease_until > 0 "
            "UNION ALL SELECT 'delivery', id FROM deliveries WHERE lease_until > 0 AND status = 'pending'"
        ).fetchall()
    return [tuple(r) for r in rows]


def leased_fetches(db: Path) -> int:
    with connect(db) as conn:
        return int(conn.execute(
            "SELECT COUNT(*) FROM tasks WHERE kind = 'fetch' AND lease_until > 0").fetchone()[0])


def leased_deliveries(db: Path) -> int:
    with connect(db) as conn:
        return int(conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE status = 'pending' AND lease_until > 0").fetchone()[0])


async def until(predicate: Callable[[], bool], process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            assert process.poll() is None, "the process exited early"
            await anyio.sleep(0.05)


async def sigterm_and_wait(process: subprocess.Popen[bytes], *, within: float) -> int:
    """SIGTERM `process`; its exit code, failing the test if it is still running after `within`
    seconds (far shorter than the lease and the downloads it was in the middle of)."""
    process.send_signal(signal.SIGTERM)
    return await anyio.to_thread.run_sync(lambda: process.wait(timeout=within))


GRACE = "2"
LONG_LEASE = "600"  # far longer than any test timeout: only a handed-back lease is taken again


@pytest.mark.e2e
@pytest.mark.usefixtures("e2e_backend")
async def test_sigterm_hands_back_downloads_and_deliveries_and_a_second_worker_takes_them_at_once(
    tmp_path: Path,
):
    # Downloads are held for 60 s and the receiver answers no one: at SIGTERM, every job's
    # download and every delivery is in flight, far beyond the grace.
    simulator = create_simulator_app(SimulatorConfig(latency_s=(0.2, 0.4), download_delay_s=60, seed=3))
    receiver = Receiver(fail_first=1_000_000, failure="slow", slow_s=120, fetch_outputs=False)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "fluxhook.log"
    db = tmp_path / "data" / "fluxhook.db"
    async with (
        serve(simulator) as provider_url,
        serve(receiver.app()) as receiver_url,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        env = fluxhook_env(
            tmp_path / "data", base, provider_url,
            FLUXHOOK_TASK_LEASE_SECONDS=LONG_LEASE,
            FLUXHOOK_SHUTDOWN_GRACE_SECONDS=GRACE,
            FLUXHOOK_HTTP_TIMEOUT_SECONDS="120",
            FLUXHOOK_WEBHOOK_TIMEOUT_SECONDS="120",
            FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS="loopback",
            FLUXHOOK_LOG_LEVEL="info",
        )
        api = run_fluxhook(["serve", "--port", str(port), "--no-workers"], env, log)
        worker = run_fluxhook(["worker"], env, log)
        try:
            await wait_up(f"{base}/healthz", api)
            sub = (await client.post("/v1/subscriptions", json={"url": f"{receiver_url}/hook"})).json()
            ids = await submit_jobs(client, 4)
            await until(lambda: leased_fetches(db) == 4 and leased_deliveries(db) >= 4, worker)

            assert await sigterm_and_wait(worker, within=20) == 0, log.read_text()[-3000:]
            assert leases_held(db) == []  # handed back, not left to run out in 600 s
            assert "handed back" in log.read_text()

            receiver.fail_first = 0
            await client.patch(f"{provider_url}/_sim/config", json={"download_delay_s": 0})
            worker = run_fluxhook(["worker"], env, log)
            final = await wait_terminal(client, ids, timeout=60)
            assert {d["status"] for d in final.values()} == {"succeeded"}, log.read_text()[-3000:]
            with anyio.fail_after(30):
                while True:
                    rows = (await client.get(f"/v1/subscriptions/{sub['id']}/deliveries")).json()["data"]
                    if rows and all(r["status"] == "delivered" for r in rows):
                        break
                    await anyio.sleep(0.1)
        finally:
            for process in (worker, api):
                process.kill()
                process.wait(timeout=10)


@pytest.mark.e2e
@pytest.mark.usefixtures("e2e_backend")
async def test_sigterm_lets_downloads_finishing_within_the_grace_finish(tmp_path: Path):
    simulator = create_simulator_app(SimulatorConfig(latency_s=(0.2, 0.4), download_delay_s=1.5, seed=4))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "fluxhook.log"
    db = tmp_path / "data" / "fluxhook.db"
    async with serve(simulator) as provider_url, httpx.AsyncClient(base_url=base, timeout=10) as client:
        env = fluxhook_env(tmp_path / "data", base, provider_url, FLUXHOOK_TASK_LEASE_SECONDS=LONG_LEASE,
                           FLUXHOOK_SHUTDOWN_GRACE_SECONDS="20")
        api = run_fluxhook(["serve", "--port", str(port), "--no-workers"], env, log)
        worker = run_fluxhook(["worker"], env, log)
        try:
            await wait_up(f"{base}/healthz", api)
            ids = await submit_jobs(client, 3)
            await until(lambda: leased_fetches(db) == 3, worker)

            assert await sigterm_and_wait(worker, within=30) == 0, log.read_text()[-3000:]
            assert leases_held(db) == []
            # Finished by the stopping worker itself: no other worker runs.
            final = await wait_terminal(client, ids, timeout=5)
            assert {d["status"] for d in final.values()} == {"succeeded"}, log.read_text()[-3000:]
        finally:
            for process in (worker, api):
                process.kill()
                process.wait(timeout=10)


@pytest.mark.e2e
@pytest.mark.usefixtures("e2e_backend")
async def test_sigterm_to_serve_with_workers_hands_back_and_a_restart_finishes_at_once(tmp_path: Path):
    simulator = create_simulator_app(SimulatorConfig(latency_s=(0.2, 0.4), download_delay_s=60, seed=6))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "fluxhook.log"
    db = tmp_path / "data" / "fluxhook.db"
    async with serve(simulator) as provider_url, httpx.AsyncClient(base_url=base, timeout=10) as client:
        env = fluxhook_env(tmp_path / "data", base, provider_url, FLUXHOOK_TASK_LEASE_SECONDS=LONG_LEASE,
                           FLUXHOOK_SHUTDOWN_GRACE_SECONDS=GRACE, FLUXHOOK_HTTP_TIMEOUT_SECONDS="120")
        process = run_fluxhook(["serve", "--port", str(port)], env, log)
        try:
            await wait_up(f"{base}/healthz", process)
            ids = await submit_jobs(client, 3)
            await until(lambda: leased_fetches(db) == 3, process)

            assert await sigterm_and_wait(process, within=20) == 0, log.read_text()[-3000:]
            assert leases_held(db) == []

            await client.patch(f"{provider_url}/_sim/config", json={"download_delay_s": 0})
            process = run_fluxhook(["serve", "--port", str(port)], env, log)
            await wait_up(f"{base}/healthz", process)
            final = await wait_terminal(client, ids, timeout=60)
            assert {d["status"] for d in final.values()} == {"succeeded"}, log.read_text()[-3000:]
        finally:
            process.kill()
            process.wait(timeout=10)


def due_fetches(db: Path) -> int:
    with connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM tasks WHERE kind = 'fetch'").fetchone()[0])


@pytest.mark.e2e
@pytest.mark.usefixtures("e2e_backend")
async def test_sigterm_to_tick_hands_back_and_the_next_tick_finishes(tmp_path: Path):
    simulator = create_simulator_app(SimulatorConfig(latency_s=(0.2, 0.4), download_delay_s=60, seed=9))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "fluxhook.log"
    db = tmp_path / "data" / "fluxhook.db"
    async with serve(simulator) as provider_url, httpx.AsyncClient(base_url=base, timeout=10) as client:
        env = fluxhook_env(tmp_path / "data", base, provider_url, FLUXHOOK_TASK_LEASE_SECONDS=LONG_LEASE,
                           FLUXHOOK_SHUTDOWN_GRACE_SECONDS=GRACE, FLUXHOOK_HTTP_TIMEOUT_SECONDS="120")
        api = run_fluxhook(["serve", "--port", str(port), "--no-workers"], env, log)
        tick = api
        try:
            await wait_up(f"{base}/healthz", api)
            ids = await submit_jobs(client, 2)
            submitting = run_fluxhook(["tick"], env, log)
            assert await anyio.to_thread.run_sync(lambda: submitting.wait(timeout=30)) == 0
            await until(lambda: due_fetches(db) == 2, api)  # the callbacks came: images to fetch

            tick = run_fluxhook(["tick"], env, log)
            await until(lambda: leased_fetches(db) == 2, tick)
            assert await sigterm_and_wait(tick, within=20) == 0, log.read_text()[-3000:]
            assert leases_held(db) == []

            await client.patch(f"{provider_url}/_sim/config", json={"download_delay_s": 0})
            tick = run_fluxhook(["tick"], env, log)
            assert await anyio.to_thread.run_sync(lambda: tick.wait(timeout=30)) == 0
            final = await wait_terminal(client, ids, timeout=5)
            assert {d["status"] for d in final.values()} == {"succeeded"}, log.read_text()[-3000:]
        finally:
            for process in (tick, api):
                process.kill()
                process.wait(timeout=10)
