"""Serverless mode end to end: no worker process anywhere; the requests that cause work do it,
and `POST /v1/tick` finishes the rest.

fluxhook runs as real `fluxhook serve` processes with FLUXHOOK_MODE=serverless, the simulator
speaks every provider's protocol over loopback, and two verifying receivers (one failing each
event's first attempt) are subscribed to every event.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from standardwebhooks import Webhook

from service.loopback import serve
from service.simulator import SimulatorConfig, create_simulator_app
from service.webhook_signing import new_secret
from tests.conftest import assert_error_shape, new_bucket, s3_env
from tests.e2e import (
    TERMINAL,
    assert_outputs_match_simulator,
    fluxhook_env,
    free_port,
    run_fluxhook,
    simulator_tasks,
    wait_up,
)
from tests.receivers import Receiver

pytestmark = [pytest.mark.anyio]

TICK_TOKEN = "tick-token-for-tests"
CALLBACK_PROVIDERS = ("bfl", "cometapi", "apiframe")
INPUTS = {
    "bfl": {"model": "flux-pro-1.1", "input": {"width": 256, "height": 256}},
    "cometapi": {"model": "flux-pro-1.1", "input": {"width": 256, "height": 256}},
    "apiframe": {"model": "flux-pro-1.1", "input": {"aspect_ratio": "1:1"}},
    "runcomfy": {"model": "flux-kontext-pro",
                 "input": {"image_url": "https://example.com/in.png", "aspect_ratio": "1:1"}},
}


def serverless_env(data_dir: Path, public_url: str, provider_url: str, **extra: str) -> dict[str, str]:
    return fluxhook_env(
        data_dir, public_url, provider_url,
        FLUXHOOK_MODE="serverless",
        FLUXHOOK_TICK_TOKEN=TICK_TOKEN,
        FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS="loopback",
        # The flaky receiver's retry falls due 4-6 s after its refusal: later than any request's
        # own work lasts, so it is a tick's to send (at 0.2 s a slow request sent it itself).
        FLUXHOOK_WEBHOOK_RETRY_SCHEDULE="0,5,0.5,1,1,1,1,1",
        FLUXHOOK_WEBHOOK_TIMEOUT_SECONDS="5",
        FLUXHOOK_POLL_GRACE_SECONDS="1",
        COMETAPI_BASE_URL=provider_url, COMETAPI_API_KEY="comet-key",
        APIFRAME_BASE_URL=provider_url, APIFRAME_API_KEY="afk_test",
        RUNCOMFY_BASE_URL=provider_url, RUNCOMFY_API_TOKEN="rc-token",
        **extra,
    )


@dataclass
class Deployment:
    """fluxhook instances (no workers), the simulator, and two subscribed receivers."""

    bases: list[str]
    provider_url: str
    clients: list[httpx.AsyncClient]
    steady: Receiver
    flaky: Receiver
    secrets: dict[str, str]
    log: Path
    ticks: list[dict[str, Any]] = field(default_factory=list)

    def client(self, n: int) -> httpx.AsyncClient:
        return self.clients[n % len(self.clients)]

    async def submit(self, provider: str, prompt: str, n: int) -> dict[str, Any]:
        spec = INPUTS[provider]
        body = {"provider": provider, "model": spec["model"], "input": {**spec["input"], "prompt": prompt}}
        response = await self.client(n).post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        return dict(response.json())

    async def tick(self, n: int) -> dict[str, Any]:
        response = await self.client(n).post(
            "/v1/tick?seconds=10", headers={"Authorization": f"Bearer {TICK_TOKEN}"})
        assert response.status_code == 200, response.text
        report = dict(response.json())
        self.ticks.append(report)
        return report

    async def documents(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        return {job_id: (await self.client(0).get(f"/v1/jobs/{job_id}")).json() for job_id in ids}

    async def deliveries(self, ids: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for job_id in ids:
            rows += (await self.client(0).get(f"/v1/jobs/{job_id}/deliveries")).json()["data"]
        return rows


@asynccontextmanager
async def deployment(
    tmp_path: Path, *, instances: int = 1, **extra: str
) -> AsyncIterator[Deployment]:
    steady, flaky = Receiver(), Receiver(fail_first=1, failure=503)
    config = SimulatorConfig(latency_s=(0.3, 0.6), callback_retry_delays_s=(0.5,) * 4, seed=91)
    log = tmp_path / "fluxhook.log"
    ports = [free_port() for _ in range(instances)]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    processes = []
    async with (
        serve(create_simulator_app(config)) as provider_url,
        serve(steady.app()) as steady_url,
        serve(flaky.app()) as flaky_url,
    ):
        try:
            for n, (port, base) in enumerate(zip(ports, bases, strict=True)):
                env = serverless_env(tmp_path / f"data{n}", base, provider_url,
                                     FLUXHOOK_WEBHOOK_SECRET=new_secret(), **extra)
                processes.append(run_fluxhook(["serve", "--port", str(port)], env, log))
            for base, process in zip(bases, processes, strict=True):
                await wait_up(f"{base}/healthz", process)
            async with _clients(bases, extra.get("FLUXHOOK_API_KEY")) as clients:
                secrets = {}
                for name, url in (("steady", steady_url), ("flaky", flaky_url)):
                    response = await clients[0].post("/v1/subscriptions", json={"url": f"{url}/hook"})
                    assert response.status_code == 201, response.text
                    secrets[name] = response.json()["secret"]
                yield Deployment(bases, provider_url, clients, steady, flaky, secrets, log)
        finally:
            for process in processes:
                process.kill()
                process.wait(timeout=10)


@asynccontextmanager
async def _clients(bases: list[str], api_key: str | None) -> AsyncIterator[list[httpx.AsyncClient]]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    clients = [httpx.AsyncClient(base_url=base, timeout=60, headers=headers) for base in bases]
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()


def verified_events(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    """Every accepted webhook, its signature checked by the independent library."""
    webhook = Webhook(secret)
    return [
        webhook.verify(got.body, {"webhook-id": got.webhook_id, "webhook-timestamp": got.timestamp,
                                  "webhook-signature": got.signature})
        for got in receiver.received if got.answered == 204
    ]


async def callback_jobs_finish_before_their_callback_is_answered(stack: Deployment) -> list[str]:
    """Phase one: every callback provider's jobs, submitted through the API and completed by
    their callbacks, with no tick at all. Returns their ids."""
    jobs = [await stack.submit(provider, f"called back {provider} {n}", n)
            for provider in CALLBACK_PROVIDERS for n in range(2)]
    for job in jobs:  # submitted before the answer: it names the provider's task
        assert job["status"] == "submitted" and job["provider_job_id"], job
    ids = [job["id"] for job in jobs]

    provider_ids = {job["provider_job_id"] for job in jobs}
    with anyio.fail_after(30):  # until every terminal callback has had its answer
        while True:
            tasks = await simulator_tasks(stack.provider_url)
            if all(_answered(tasks[task_id]) for task_id in provider_ids):
                break
            await anyio.sleep(0.1)
    docs = await stack.documents(ids)
    await assert_outputs_match_simulator(stack.client(0), docs, tasks)
    succeeded = {}
    for got in stack.steady.received:
        payload = json.loads(got.body)
        if payload["type"] == "job.succeeded":
            succeeded[payload["data"]["id"]] = got
    for job_id, doc in docs.items():
        assert doc["status"] == "succeeded" and doc["completion_source"] == "callback", doc
        answered = _answered(tasks[doc["provider_job_id"]])
        assert answered is not None and answered["status_code"] == 200, answered
        # The image was stored and job.succeeded delivered while the callback was still open.
        assert succeeded[job_id].arrived_at < answered["answered_at"], (job_id, answered)
        assert succeeded[job_id].answered == 204
        # The receiver fetched the stored image from fluxhook as soon as it was told.
        outputs = json.loads(succeeded[job_id].body)["data"]["outputs"]
        assert outputs and all(stack.steady.output_status[output["url"]] == 200 for output in outputs)
    assert stack.ticks == []
    return ids


SUCCEEDED_CALLBACKS = ("Ready", "completed")  # the event names of BFL's/CometAPI's and Apiframe's


def _answered(task: dict[str, Any]) -> dict[str, Any] | None:
    """The simulator's log entry of the task's final callback attempt that had an answer."""
    answered = [entry for entry in task["callback_log"]
                if entry["event"] in SUCCEEDED_CALLBACKS and "answered_at" in entry]
    assert len(answered) <= 1, answered  # no callback was retried or repeated
    return answered[0] if answered else None


async def tick_until(stack: Deployment, ids: list[str], *, ticks: int) -> None:
    """Run `ticks` concurrent tick loops (one per instance in turn) until every job is final
    and every delivery delivered."""

    async def done() -> bool:
        docs = await stack.documents(ids)
        rows = await stack.deliveries(ids)
        return (all(d["status"] in TERMINAL for d in docs.values())
                and all(r["status"] == "delivered" for r in rows))

    async def loop(n: int) -> None:
        while True:
            await stack.tick(n)
            await anyio.sleep(0.2)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for n in range(ticks):
                group.start_soon(loop, n)
            while not await done():
                await anyio.sleep(0.2)
            group.cancel_scope.cancel()


async def lost_callbacks_and_failed_deliveries_finish_by_ticks(
    stack: Deployment, earlier: list[str], *, ticks: int
) -> list[str]:
    """Phase two: callbacks dropped, deliveries to the flaky receiver failed once; submitted
    while `ticks` ticks run at once (racing the requests' own submits). Returns their ids."""
    async with httpx.AsyncClient() as client:
        await client.patch(f"{stack.provider_url}/_sim/config", json={"callback_drop_rate": 1.0})
    ids: list[str] = []

    async def submit_all() -> None:
        providers = [*CALLBACK_PROVIDERS, *CALLBACK_PROVIDERS, "runcomfy"]
        for n, provider in enumerate(providers):
            ids.append((await stack.submit(provider, f"dropped {provider} {n}", n))["id"])

    async with anyio.create_task_group() as group:
        for n in range(ticks):
            group.start_soon(stack.tick, n)
        group.start_soon(submit_all)
    await tick_until(stack, [*earlier, *ids], ticks=ticks)

    docs = await stack.documents(ids)
    tasks = await simulator_tasks(stack.provider_url)
    await assert_outputs_match_simulator(stack.client(0), docs, tasks)
    for doc in docs.values():
        assert doc["status"] == "succeeded" and doc["completion_source"] == "poll", doc
    return ids


def assert_each_job_once_and_each_delivery_once(stack: Deployment, tasks: dict[str, dict],
                                                docs: dict[str, dict], events: set[str]) -> None:
    prompts = Counter(task["prompt"] for task in tasks.values())
    assert len(tasks) == len(docs) and set(prompts.values()) == {1}, prompts  # once at the provider
    for name, receiver in (("steady", stack.steady), ("flaky", stack.flaky)):
        accepted = receiver.accepted_ids()
        assert sorted(accepted) == sorted(events), name  # every event, each accepted once
        verified = verified_events(receiver, stack.secrets[name])
        assert {event["id"] for event in verified} == events
    # Never sent twice: one attempt each to the steady receiver; the flaky one refused the
    # first and took the second (a third would be a delivery sent by two ticks).
    assert set(stack.steady.attempts.values()) == {1}
    assert set(stack.flaky.attempts.values()) == {2}
    assert any(report["ran"]["deliveries"] for report in stack.ticks)
    assert any(report["ran"]["tasks"] for report in stack.ticks)


async def serverless_scenario(stack: Deployment, *, ticks: int) -> None:
    first = await callback_jobs_finish_before_their_callback_is_answered(stack)
    second = await lost_callbacks_and_failed_deliveries_finish_by_ticks(stack, first, ticks=ticks)
    ids = [*first, *second]
    docs = await stack.documents(ids)
    tasks = await simulator_tasks(stack.provider_url)
    events = {row["event_id"] for row in await stack.deliveries(ids)}
    assert {"job.submitted", "job.succeeded"} <= {row["event_type"] for row in await stack.deliveries(ids)}
    assert_each_job_once_and_each_delivery_once(stack, tasks, docs, events)
    last = await stack.tick(0)
    assert last["due"] == {"tasks": {}, "deliveries": 0}, last


@pytest.mark.e2e
@pytest.mark.sqlite_only
@pytest.mark.usefixtures("e2e_backend")
async def test_serverless_requests_finish_called_back_jobs_and_ticks_finish_the_rest(tmp_path: Path):
    async with deployment(tmp_path) as stack:
        await serverless_scenario(stack, ticks=1)


@pytest.mark.e2e
async def test_serverless_on_postgres_and_s3_two_instances_and_two_ticks_do_everything_once(
    tmp_path: Path, postgres_url: str, s3_endpoint: str
):
    shared = {"FLUXHOOK_DATABASE_URL": postgres_url, "FLUXHOOK_DATABASE_POOL_SIZE": "4",
              **s3_env(s3_endpoint, new_bucket(s3_endpoint))}
    async with deployment(tmp_path, instances=2, **shared) as stack:
        await serverless_scenario(stack, ticks=2)


@pytest.mark.e2e
@pytest.mark.sqlite_only
@pytest.mark.usefixtures("e2e_backend")
async def test_tick_without_its_credential_is_refused_and_does_nothing(tmp_path: Path):
    async with deployment(tmp_path, FLUXHOOK_API_KEY="the-api-key") as stack:
        async with httpx.AsyncClient() as client:  # nothing will be called back: all work waits
            await client.patch(f"{stack.provider_url}/_sim/config", json={"callback_drop_rate": 1.0})
        job = await stack.submit("bfl", "waits for a tick", 0)
        assert job["status"] == "submitted"
        db = tmp_path / "data0" / "fluxhook.db"
        with anyio.fail_after(10):  # past the poll grace: the fallback poll is due
            while not _due_tasks(db):
                await anyio.sleep(0.1)
        before = _store_state(db)

        refused = (None, "Bearer the-api-key", f"Bearer {TICK_TOKEN}x", f"Basic {TICK_TOKEN}", TICK_TOKEN,
                   f"Bearer {TICK_TOKEN[:-1]}")
        async with httpx.AsyncClient(base_url=stack.bases[0]) as client:  # no API key of its own
            for given in refused:
                headers = {"Authorization": given} if given is not None else {}
                for method in ("POST", "GET"):
                    response = await client.request(method, "/v1/tick?seconds=5", headers=headers)
                    assert_error_shape(response, 401, "unauthorized")
                    assert TICK_TOKEN not in response.text
        assert _store_state(db) == before  # nothing was done: no task, job or delivery changed
        assert TICK_TOKEN not in stack.log.read_text()

        report = await stack.tick(0)  # with it, the same call runs the due poll
        assert report["ran"]["tasks"] >= 1
        assert _store_state(db) != before


def _due_tasks(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM tasks WHERE due_at <= ? AND lease_until <= ?",
                                (time.time() * 1000, time.time() * 1000)).fetchone()[0])


def _store_state(db: Path) -> dict[str, Any]:
    queries = {
        "tasks": "SELECT id, kind, due_at, lease_until, attempts FROM tasks ORDER BY id",
        "jobs": "SELECT id, status, updated_at, poll_count FROM jobs ORDER BY id",
        "deliveries": "SELECT id, status, attempts FROM deliveries ORDER BY id",
        "delivery_attempts": "SELECT id FROM delivery_attempts ORDER BY id",
    }
    with sqlite3.connect(db) as conn:
        return {name: conn.execute(sql).fetchall() for name, sql in queries.items()}
