"""Several hosts: two web processes (`fluxhook serve --no-workers`) behind one load balancer and
two workers (`fluxhook worker`), sharing nothing but one PostgreSQL database and one S3 bucket
(each process has a data directory of its own), as on four hosts.

200 jobs over all four providers, through a simulator that drops 30% of the
callbacks and sends 10% twice; it runs as a process of its own too. The two web processes sit
behind one address, a load balancer (tests/balancer.py) that is fluxhook's public URL for
clients and provider callbacks alike. One worker is SIGKILLed once 60 provider tasks exist,
one web once 120 do; each is restarted once the others have carried on. Then:

- every job succeeds;
- each job was submitted to its provider once. A second submit is allowed only where a
  submit's answer was lost (an `unknown` attempt: the worker died between the provider's answer
  and fluxhook's commit) and nothing could name that task (its callback dropped, or a provider
  that does not call back): then both tasks are the job's, the lost one as the `unknown`
  attempt and the one it completed with as the attempt naming it;
- every image in the bucket is stored under its own sha256, and those are exactly the sha256s
  the jobs state, which are the simulator's images;
- every job's `job.succeeded` reached a receiver that verifies each delivery's signature
  (Standard Webhooks), under one `webhook-id` however often it was sent.

A worker killed holding a submit leaves an `unknown` attempt that waits out the adoption window
before submitting again; the window and the task lease are short here so that takes seconds.
"""

from __future__ import annotations

import functools
import hashlib
import signal
import subprocess
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import obstore
import pytest

from service.loopback import serve
from storage.blobs.s3 import S3BlobStore
from tests.balancer import Balancer, balancing
from tests.blobs import stored_names
from tests.conftest import new_bucket, s3_env
from tests.e2e import TERMINAL, fluxhook_env, free_port, read_log, run_fluxhook, wait_up
from tests.receivers import Receiver

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.timeout(600)]

JOBS = 200
KILL_WORKER_AT = 60  # provider tasks created when a worker is SIGKILLed
KILL_WEB_AT = 120  # ... and when a web process is
RESTART_AFTER = 15  # more provider tasks created by the survivors before the killed one restarts
PREFIX = "multi-host"

SIMULATOR = {  # FLUXHOOK_SIM_* knobs of the simulator process
    "LATENCY_S": "0.3,1.2",
    "CALLBACK_DROP_RATE": "0.3",
    "CALLBACK_DUPLICATE_RATE": "0.1",
    # A callback refused while a web process is down is retried soon, not after BFL's 5 s and 30 s.
    "CALLBACK_RETRY_DELAYS_S": "0.5,0.5,1,1,1,2,2",
    "SEED": "81",
}

SHARED = {
    "COMETAPI_API_KEY": "comet-key",
    "APIFRAME_API_KEY": "afk_test",
    "RUNCOMFY_API_TOKEN": "rc-token",
    "FLUXHOOK_ADOPT_WINDOW_SECONDS": "8",
    "FLUXHOOK_TASK_LEASE_SECONDS": "5",
    "FLUXHOOK_DATABASE_POOL_SIZE": "5",
    "FLUXHOOK_POLL_BASE_SECONDS": "0.5",
    "FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS": "loopback",
    "FLUXHOOK_WEBHOOK_RETRY_SCHEDULE": "0,0.5,1,1,2,2,2,2",
    "FLUXHOOK_WEBHOOK_TIMEOUT_SECONDS": "3",
    "FLUXHOOK_LOG_LEVEL": "info",
}

# Attempt outcomes that stand for a provider task the job caused.
TASK_OUTCOMES = {"unknown", "accepted", "adopted", "orphaned"}


def job_request(n: int) -> dict[str, Any]:
    """Job `n`: the providers in turn, each job's prompt its own (the simulator's tasks are
    matched to jobs by it)."""
    prompt = f"{PREFIX} job {n}"
    match n % 4:
        case 0:
            body = {"provider": "bfl", "model": "flux-pro-1.1",
                    "input": {"prompt": prompt, "width": 256, "height": 256, "output_format": "png"}}
        case 1:
            body = {"provider": "cometapi", "model": "flux-pro-1.1",
                    "input": {"prompt": prompt, "width": 320, "height": 256}}
        case 2:
            body = {"provider": "apiframe", "model": "flux-pro-1.1",
                    "input": {"prompt": prompt, "aspect_ratio": "1:1"}}
        case _:
            body = {"provider": "runcomfy", "model": "flux-kontext-pro",
                    "input": {"prompt": prompt, "image_url": "https://example.com/in.png",
                              "aspect_ratio": "1:1"}}
    return {**body, "metadata": {"n": n}}


class Hosts:
    """The test's processes by name, each startable again under its name after a kill."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: dict[str, int] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.running[name] = run_fluxhook(args, env, self.log)
        return self.running[name]

    def kill(self, name: str) -> None:
        """SIGKILL: nothing of the process runs after it, no shutdown, no handing back."""
        process = self.running.pop(name)
        process.send_signal(signal.SIGKILL)
        self.killed[name] = process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.running.values():
            process.kill()
            process.wait(timeout=10)


async def retried(call: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """A request through the balancer, again if its connection dropped (a web process was
    killed under it) or no web process was up; requests here are safe to repeat."""
    with anyio.fail_after(60):
        while True:
            try:
                response = await call()
            except httpx.TransportError:
                await anyio.sleep(0.2)
                continue
            if response.status_code < 500:
                return response
            await anyio.sleep(0.2)


async def provider_tasks_created(client: httpx.AsyncClient, simulator: str) -> int:
    stats = (await client.get(f"{simulator}/_sim/stats")).json()
    return sum(protocol["submitted"] for protocol in stats.values())


async def every_job(client: httpx.AsyncClient) -> dict[str, dict]:
    docs: dict[str, dict] = {}
    cursor = None
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        page = (await retried(functools.partial(client.get, "/v1/jobs", params=params))).json()
        docs.update({doc["id"]: doc for doc in page["data"]})
        cursor = page["next_cursor"]
        if cursor is None:
            return docs


async def test_two_webs_and_two_workers_one_of_each_killed_finish_every_job_once(
    tmp_path: Path, postgres_url: str, s3_endpoint: str
):
    bucket = new_bucket(s3_endpoint)
    blob_env = s3_env(s3_endpoint, bucket, prefix="images")
    web_ports = [free_port(), free_port()]
    sim_port = free_port()
    simulator = f"http://127.0.0.1:{sim_port}"
    receiver = Receiver(fetch_outputs=False)
    log = tmp_path / "hosts.log"

    async with balancing(web_ports) as lb, serve(receiver.app()) as receiver_url:

        def env(name: str) -> dict[str, str]:
            return fluxhook_env(
                tmp_path / name, lb.url, simulator,
                FLUXHOOK_DATABASE_URL=postgres_url,
                COMETAPI_BASE_URL=simulator, APIFRAME_BASE_URL=simulator, RUNCOMFY_BASE_URL=simulator,
                **SHARED, **blob_env,
            )

        hosts = Hosts(log)
        sim_env = {f"FLUXHOOK_SIM_{knob}": value for knob, value in SIMULATOR.items()}
        hosts.start("simulator", ["simulator", "--port", str(sim_port)],
                    {**sim_env, "FLUXHOOK_LOG_LEVEL": "warning"})

        def web(n: int) -> None:
            hosts.start(f"web{n}", ["serve", "--port", str(web_ports[n]), "--no-workers"], env(f"web{n}"))

        def worker(n: int) -> None:
            hosts.start(f"worker{n}", ["worker"], env(f"worker{n}"))

        try:
            await wait_up(f"{simulator}/_sim/stats", hosts.running["simulator"])
            for n in range(2):
                web(n)
            for n in range(2):
                await wait_up(f"http://127.0.0.1:{web_ports[n]}/healthz", hosts.running[f"web{n}"])
            for n in range(2):
                worker(n)

            async with httpx.AsyncClient(base_url=lb.url, timeout=30) as client:
                subscription = await client.post(
                    "/v1/subscriptions", json={"url": f"{receiver_url}/hook", "events": ["job.succeeded"]})
                assert subscription.status_code == 201, subscription.text
                receiver.secret = subscription.json()["secret"]

                async def submit(n: int, limit: anyio.CapacityLimiter) -> None:
                    async with limit:
                        response = await retried(lambda: client.post(
                            "/v1/jobs", json=job_request(n), headers={"Idempotency-Key": f"{PREFIX}-{n}"}))
                    assert response.status_code in (200, 202), response.text

                async def kill_and_restart(
                    name: str, at: int, restart: Callable[[], Awaitable[None]]
                ) -> None:
                    async with httpx.AsyncClient(timeout=30) as sim:
                        while await provider_tasks_created(sim, simulator) < at:
                            await anyio.sleep(0.05)
                        hosts.kill(name)
                        while await provider_tasks_created(sim, simulator) < min(at + RESTART_AFTER, JOBS):
                            await anyio.sleep(0.05)
                    await restart()

                async def restart_worker() -> None:
                    worker(0)

                async def restart_web() -> None:
                    web(0)
                    await wait_up(f"http://127.0.0.1:{web_ports[0]}/healthz", hosts.running["web0"])

                with anyio.fail_after(120):
                    async with anyio.create_task_group() as group:
                        group.start_soon(kill_and_restart, "worker0", KILL_WORKER_AT, restart_worker)
                        group.start_soon(kill_and_restart, "web0", KILL_WEB_AT, restart_web)
                        limit = anyio.CapacityLimiter(16)
                        for n in range(JOBS):
                            group.start_soon(submit, n, limit)

                with anyio.move_on_after(240):
                    while True:
                        docs = await every_job(client)
                        if len(docs) == JOBS and all(d["status"] in TERMINAL for d in docs.values()):
                            break
                        await anyio.sleep(1)
                assert len(docs) == JOBS and {d["status"] for d in docs.values()} == {"succeeded"}, (
                    [(d["id"], d["status"], d["error"]) for d in docs.values() if d["status"] != "succeeded"],
                    read_log(log)[-5000:],
                )
                with anyio.move_on_after(120):
                    while {r.payload["data"]["id"] for r in receiver.received} != set(docs):
                        await anyio.sleep(0.5)
                async with httpx.AsyncClient(timeout=30) as sim:
                    tasks = (await sim.get(f"{simulator}/_sim/tasks")).json()
            images = await stored_images(blob_env, bucket)
        finally:
            hosts.stop_all()

    assert hosts.killed == {"worker0": -signal.SIGKILL, "web0": -signal.SIGKILL}
    assert_submitted_once(docs, tasks)
    assert_images_are_the_jobs(docs, tasks, images)
    assert_each_success_notified_once(docs, receiver)
    assert_both_webs_served(lb, web_ports)


async def stored_images(blob_env: dict[str, str], bucket: str) -> dict[str, str]:
    """Every image object in the bucket (not the temporary objects of uploads a kill cut
    short): its name under the prefix -> the sha256 of the bytes it holds, downloaded."""
    blobs = S3BlobStore(bucket, "images", blob_env)
    images: dict[str, str] = {}
    for name in await stored_names(blobs):
        if name.startswith("tmp/"):
            continue
        result = await obstore.get_async(blobs._store, f"images/{name}")
        images[name] = hashlib.sha256(bytes(await result.bytes_async())).hexdigest()
    return images


def tasks_per_job(docs: dict[str, dict], tasks: list[dict]) -> dict[str, list[dict]]:
    """Each job's provider tasks (matched by its prompt, its own), oldest first."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for task in sorted(tasks, key=lambda t: t["created_at"]):
        by_prompt[task["prompt"]].append(task)
    jobs = {doc["input"]["prompt"]: job_id for job_id, doc in docs.items()}
    assert set(by_prompt) <= set(jobs), "a provider task no job asked for"
    return {job_id: by_prompt[prompt] for prompt, job_id in jobs.items()}


def assert_submitted_once(docs: dict[str, dict], tasks: list[dict]) -> None:
    for job_id, mine in tasks_per_job(docs, tasks).items():
        doc = docs[job_id]
        ids = [task["id"] for task in mine]
        named = {a["provider_job_id"] for a in doc["attempts"] if a["provider_job_id"]}
        assert doc["provider_job_id"] in ids, (doc["attempts"], ids)
        assert named <= set(ids), (doc["attempts"], ids)  # every task it names is its own
        if len(mine) == 1:
            continue
        # Submitted twice: only after a lost answer whose task nothing could name.
        assert len(mine) == 2, (doc["attempts"], mine)
        first, second = mine
        assert second["id"] == doc["provider_job_id"] and first["id"] not in named, doc["attempts"]
        assert first["callback_dropped"] or first["webhook_url"] is None, (first, doc["attempts"])
        lost = [a for a in doc["attempts"] if a["outcome"] == "unknown" and a["provider_job_id"] is None]
        assert lost, doc["attempts"]
        # The lost attempt is the first task's: written down just before that task was created.
        assert any(epoch_s(a["at"]) <= first["created_at"] + 0.01 for a in lost), (doc["attempts"], first)
        outcomes = [a["outcome"] for a in doc["attempts"] if a["outcome"] in TASK_OUTCOMES]
        assert outcomes.index("unknown") < len(outcomes) - 1, doc["attempts"]


def epoch_s(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def assert_images_are_the_jobs(docs: dict[str, dict], tasks: list[dict], images: dict[str, str]) -> None:
    by_id = {task["id"]: task for task in tasks}
    stated = set()
    for doc in docs.values():
        assert len(doc["outputs"]) == 1, doc["outputs"]
        # The image the job states is the one its provider task made.
        assert [o["sha256"] for o in doc["outputs"]] == by_id[doc["provider_job_id"]]["sha256s"], doc["id"]
        stated.add(doc["outputs"][0]["sha256"])
    for name, digest in images.items():
        assert name == f"{digest[:2]}/{digest[2:4]}/{digest}", "an object whose bytes are not its name"
    assert {name.rsplit("/", 1)[-1] for name in images} == stated


def assert_each_success_notified_once(docs: dict[str, dict], receiver: Receiver) -> None:
    assert receiver.forged == 0  # every delivery verified with the subscription's secret
    webhook_ids: dict[str, set[str]] = defaultdict(set)
    for got in receiver.received:
        payload = got.payload
        assert payload["type"] == "job.succeeded" and payload["id"] == got.webhook_id
        job = payload["data"]
        assert [o["sha256"] for o in job["outputs"]] == [o["sha256"] for o in docs[job["id"]]["outputs"]]
        webhook_ids[job["id"]].add(got.webhook_id)
    assert set(webhook_ids) == set(docs)
    assert {job_id: ids for job_id, ids in webhook_ids.items() if len(ids) != 1} == {}


def assert_both_webs_served(lb: Balancer, web_ports: list[int]) -> None:
    assert all(lb.connections[port] > 0 for port in web_ports), lb.connections
