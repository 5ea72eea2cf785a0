"""Callback-to-notification latency: fluxhook vs a bare httpx POST, same run, same machine.

The time from a provider's signed "Ready" callback leaving the provider to the downstream
receiver getting `job.succeeded`, for a small PNG on loopback, at a steady rate of jobs:

    provider callback -> [server] verify, download the image, notify -> receiver

Five sides, each in processes of its own so the load generator does not share their event
loops, measured in turn (the order alternating by round):

- `baseline` (bench/notify_baseline.py) takes the same callback, checks the same HMAC,
  downloads the same image with httpx, and POSTs a small JSON note to the same receiver with a
  bare `httpx.AsyncClient.post`: no durability, no queue, no webhook signature, no retries.
- `durable`: the baseline plus the least durability fluxhook promises, written inline by hand
  (bench/notify_baseline.py `--durable`): the callback committed to SQLite with
  synchronous=FULL before the download, the image fsynced and renamed into place, the success
  committed with synchronous=FULL before the note is sent. Its ratio to the baseline is what
  durability alone costs on this machine: a floor under any server that keeps those promises.
- `fluxhook`: `python -m service.cli serve` with its workers in-process, on SQLite (default
  settings apart from loopback destinations, no cap on active jobs at the stand-in provider and
  a poll grace long enough that the poller never runs). It verifies the callback, commits it
  (synchronous=FULL), downloads the image into its blob store, commits the success, and its
  notifier POSTs a Standard Webhooks signed `job.succeeded` to a subscription.
- `fluxhook-split`: the same on SQLite as the Procfile splits it: `serve --no-workers` takes
  the callback, and a separate `fluxhook worker` process on the same data directory learns of
  it from the WAL file (storage/sqlite/wakeups.py), applies it, downloads and notifies. Issue 10's budget:
  its p50 at most 5 ms above the `fluxhook` side's.
- `fluxhook-pg`: the same settings on PostgreSQL, as the Procfile splits it: `serve
  --no-workers` takes the callback, and a separate `fluxhook worker` process learns of it
  through LISTEN/NOTIFY (storage/postgres/wakeups.py), applies it, downloads and notifies. The
  bench starts a throwaway PostgreSQL cluster of its own (tests/pg_server.py, as the `postgres`
  user when run as root) with PostgreSQL's durable defaults (fsync, synchronous commit), and a
  fresh database per round. Issue 8's budget: its p50 at most 5 ms above the `fluxhook` side's.

This process plays the rest, on one event loop: a stand-in BFL provider (accepts submits,
serves the PNG), the load generator (plays the provider's callbacks open-loop at `--rate`,
t0 taken just before each POST), and the receiver (t1 taken when a notification's body has
arrived). At 20 jobs/s that is light work, and t0 and t1 read the same clock.

    .venv/bin/python bench/notify.py [--jobs 300] [--rate 20] [--rounds 1] [--warmup 20]
                                     [--sides baseline,durable,fluxhook,fluxhook-split,fluxhook-pg]

Prints absolute figures for each side, the ratios fluxhook / baseline, and each split side's
p50 minus the one-process side's against the budget. Not a test: these machines are shared
and noisy, so read the ratios, and run it more than once. Each side's CPU time per job (its
server processes', and on PostgreSQL the database server's apart) is reported too: on a
loaded machine it moves far less than latency does, and latency cannot be lower than the part
of it spent on the path.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import io
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import psycopg
from PIL import Image
from psycopg import sql
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.loopback import serve  # noqa: E402
from tests import pg_server  # noqa: E402  (the throwaway PostgreSQL the tests start too)

SECRET_KEY = "bench-secret-key"  # noqa: S105 - a throwaway key for a throwaway data dir
BASELINE_SECRET = "bench-baseline-webhook-secret"  # noqa: S105 - signs the baseline's callbacks
MODEL = "flux-pro-1.1"
SIDES = ("baseline", "durable", "fluxhook", "fluxhook-split", "fluxhook-pg")
SIDE_NAMES = {
    "baseline": "bare endpoint (httpx download + POST)",
    "durable": "bare endpoint + the least durability (2 SQLite FULL commits, fsynced image)",
    "fluxhook": "fluxhook, one process (serve + in-process workers), SQLite",
    "fluxhook-split": "fluxhook, serve --no-workers + worker processes, SQLite",
    "fluxhook-pg": "fluxhook, serve --no-workers + worker processes, PostgreSQL",
}
SPLIT_BUDGET_MS = 5.0  # what a split side may add to the one-process p50 (issues 8 and 10)


def small_png(side: int = 64) -> bytes:
    """A `side` x `side` PNG of seeded noise (so it does not compress away): about 12 kB."""
    image = Image.frombytes("RGB", (side, side), random.Random(side).randbytes(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass
class Provider:
    """A stand-in BFL: takes submits (keeping each job's webhook URL and secret), serves the PNG."""

    image: bytes
    base: str = ""
    webhooks: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (url, secret)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route(f"/v1/{MODEL}", self.submit, methods=["POST"]),
            Route("/v1/get_result", self.get_result, methods=["GET"]),
            Route("/img/{name}", self.serve_image, methods=["GET"]),
        ])

    async def submit(self, request: Request) -> Response:
        body = await request.json()
        task_id = str(uuid.uuid4())
        self.webhooks[task_id] = (body["webhook_url"], body["webhook_secret"])
        return JSONResponse({"id": task_id, "polling_url": f"{self.base}/v1/get_result?id={task_id}"})

    async def get_result(self, request: Request) -> Response:
        # Only reached if fluxhook's fallback poller runs, which the poll grace should prevent.
        return JSONResponse({"id": request.query_params.get("id"), "status": "Pending"})

    async def serve_image(self, request: Request) -> Response:
        return Response(self.image, media_type="image/png")


@dataclass
class Arrival:
    at: float  # perf_counter when the body had arrived
    wall_ms: float  # the same moment on the wall clock, to compare with fluxhook's timestamps
    payload: dict[str, Any]


@dataclass
class Receiver:
    """The downstream subscriber: notes when each job's `job.succeeded` arrives."""

    arrivals: dict[str, Arrival] = field(default_factory=dict)
    expected: int = 0
    done: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    def expect(self, count: int) -> None:
        self.arrivals, self.expected, self.done = {}, count, anyio.Event()

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        at, wall_ms = time.perf_counter(), time.time() * 1000
        payload = json.loads(body)
        if payload.get("type") == "job.succeeded":
            key = payload["data"]["provider_job_id"]
            self.arrivals.setdefault(key, Arrival(at, wall_ms, payload))
            if len(self.arrivals) >= self.expected:
                self.done.set()
        return Response(status_code=204)


@dataclass(frozen=True)
class Callback:
    key: str  # the provider's task id, which the notification carries back
    url: str
    body: bytes
    headers: dict[str, str]


def signed_callback(key: str, url: str, secret: str, image_url: str) -> Callback:
    """BFL's callback for a finished task, signed as BFL signs: HMAC-SHA256 over the raw body."""
    body = json.dumps({"id": key, "status": "Ready", "result": {"sample": image_url}}).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return Callback(key, url, body, {"X-BFL-Signature": f"sha256={signature}",
                                     "Content-Type": "application/json"})


def tcp_listener() -> socket.socket:
    """A loopback listener like `service.loopback.bind_loopback()`, but opened as IPPROTO_TCP.

    asyncio sets TCP_NODELAY only on accepted sockets whose proto is IPPROTO_TCP, and a socket
    made with proto 0 (as bind_loopback's is) hands that 0 on to every connection it accepts.
    Without TCP_NODELAY a response written as two segments (uvicorn writes the head, then the
    body) can wait ~40 ms for the client's delayed ACK, which would be measured as latency.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env},
                                stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def wait_up(base: str, process: subprocess.Popen) -> None:
    async with httpx.AsyncClient() as client:
        with anyio.fail_after(30):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server at {base} exited with {process.returncode}")
                try:
                    await client.get(base + "/healthz")  # any answer will do, even a 404
                    return
                except httpx.TransportError:
                    await anyio.sleep(0.1)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes `pids` have used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(server: Any) -> float:
    """User + system CPU time the bench's PostgreSQL server has used so far: its postmaster's,
    every process it runs now, and every one that has exited (counted in the postmaster's
    children's times once reaped), so a backend whose connection closed mid-run still counts."""
    try:
        postmaster = int((server.root / "data" / "postmaster.pid").read_text().split()[0])
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return 0.0
    ticks = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK") + cpu_seconds(children)


async def drive(callbacks: list[Callback], receiver: Receiver, *, rate: float, warmup: int,
                drain_s: float, server_pids: list[int],
                db_cpu: Callable[[], float] | None = None) -> dict[str, Any]:
    """Post `callbacks` open-loop at `rate` per second; figures over all but the first `warmup`.

    Each POST starts on schedule whether or not earlier ones have been answered, so a slow
    server shows up as latency rather than as a lower rate. The CPU time of `server_pids` (and
    the database server's, `db_cpu`) is taken over the whole run, warm-up included, per callback.
    """
    receiver.expect(len(callbacks))
    sent: dict[str, tuple[float, float]] = {}  # key -> (t0 perf_counter, t0 wall ms)
    answered: dict[str, float] = {}
    refused: list[int] = []

    async def post(client: httpx.AsyncClient, callback: Callback) -> None:
        sent[callback.key] = (time.perf_counter(), time.time() * 1000)
        response = await client.post(callback.url, content=callback.body, headers=callback.headers)
        answered[callback.key] = time.perf_counter() - sent[callback.key][0]
        if response.status_code != 200:
            refused.append(response.status_code)

    cpu_before = (cpu_seconds(server_pids), db_cpu() if db_cpu else 0.0)
    async with httpx.AsyncClient(timeout=30) as client:
        began = time.perf_counter()
        async with anyio.create_task_group() as group:
            for n, callback in enumerate(callbacks):
                await anyio.sleep(max(0.0, began + n / rate - time.perf_counter()))
                group.start_soon(post, client, callback)
        send_s = time.perf_counter() - began
    with anyio.move_on_after(drain_s):
        await receiver.done.wait()
    cpu_after = (cpu_seconds(server_pids), db_cpu() if db_cpu else 0.0)

    measured = [c.key for c in callbacks[warmup:]]
    latencies = [receiver.arrivals[k].at - sent[k][0] for k in measured if k in receiver.arrivals]
    result: dict[str, Any] = {
        "jobs": len(measured),
        "delivered": len(latencies),
        "callbacks_refused": len(refused),
        "send_seconds": round(send_s, 2),
        **figures(latencies),
        "callback_answered_p50_ms": figures([answered[k] for k in measured if k in answered])["p50_ms"],
        "cpu_ms_per_job": round((cpu_after[0] - cpu_before[0]) * 1000 / len(callbacks), 2),
    }
    if db_cpu is not None:
        result["db_cpu_ms_per_job"] = round((cpu_after[1] - cpu_before[1]) * 1000 / len(callbacks), 2)
    arrived = [k for k in measured if k in receiver.arrivals]
    committed = {k: _completed_ms(receiver.arrivals[k].payload) for k in arrived}
    if arrived and None not in committed.values():
        # fluxhook's notification carries the job document, whose completed_at (ms) is when the
        # success (outputs stored, event and deliveries queued) was committed: split there.
        result["callback_to_committed_p50_ms"] = _p50_ms(
            [(committed[k] - sent[k][1]) / 1000 for k in arrived])  # type: ignore[operator]
        result["committed_to_received_p50_ms"] = _p50_ms(
            [(receiver.arrivals[k].wall_ms - committed[k]) / 1000 for k in arrived])  # type: ignore[operator]
    return result


def _completed_ms(payload: dict[str, Any]) -> float | None:
    completed = payload.get("data", {}).get("completed_at")
    if not isinstance(completed, str):
        return None
    return datetime.fromisoformat(completed).timestamp() * 1000


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def figures(seconds: list[float]) -> dict[str, float | None]:
    ordered = sorted(seconds)
    if not ordered:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": round(percentile(ordered, 0.50) * 1000, 2),
            "p90_ms": round(percentile(ordered, 0.90) * 1000, 2),
            "p99_ms": round(percentile(ordered, 0.99) * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2)}


def _p50_ms(seconds: list[float]) -> float | None:
    return figures(seconds)["p50_ms"]


async def run_baseline(args: argparse.Namespace, tmp: Path, tag: str, provider: Provider,
                       receiver: Receiver, receiver_url: str, *, durable: bool = False) -> dict[str, Any]:
    port = free_port()
    log = tmp / f"baseline-{tag}.log"
    floor = ["--durable", str(tmp / f"durable-{tag}")] if durable else []
    process = start([sys.executable, str(ROOT / "bench" / "notify_baseline.py"), str(port),
                     f"{receiver_url}/hook", *floor], {"NOTIFY_BASELINE_SECRET": BASELINE_SECRET}, log)
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_up(base, process)
        keys = [str(uuid.uuid4()) for _ in range(args.warmup + args.jobs)]
        callbacks = [signed_callback(k, f"{base}/v1/callbacks/bfl/{k}", BASELINE_SECRET,
                                     f"{provider.base}/img/{k}.png") for k in keys]
        return await drive(callbacks, receiver, rate=args.rate, warmup=args.warmup, drain_s=args.drain,
                           server_pids=[process.pid])
    except BaseException:
        print(f"baseline log:\n{log_tail(log)}", file=sys.stderr)
        raise
    finally:
        stop(process)


async def run_fluxhook(args: argparse.Namespace, tmp: Path, tag: str, provider: Provider,
                       receiver: Receiver, receiver_url: str) -> dict[str, Any]:
    """fluxhook as one process: `serve` with its workers in-process, on SQLite."""
    return await _run_fluxhook(args, tmp, f"sqlite-{tag}", provider, receiver, receiver_url,
                               database_url=None)


async def run_fluxhook_split(args: argparse.Namespace, tmp: Path, tag: str, provider: Provider,
                             receiver: Receiver, receiver_url: str) -> dict[str, Any]:
    """fluxhook as two processes, `serve --no-workers` and `worker`, on one SQLite data
    directory: the worker learns of each callback from the WAL file."""
    return await _run_fluxhook(args, tmp, f"split-{tag}", provider, receiver, receiver_url,
                               database_url=None, split=True)


async def run_fluxhook_pg(args: argparse.Namespace, tmp: Path, tag: str, provider: Provider,
                          receiver: Receiver, receiver_url: str) -> dict[str, Any]:
    """fluxhook as two processes, `serve --no-workers` and `worker`, on a fresh PostgreSQL
    database of the bench's own server: the worker learns of each callback through NOTIFY."""
    server = args.postgres
    name = f"fluxhook_bench_{tag}"
    await anyio.to_thread.run_sync(_create_database, server.url, name)
    return await _run_fluxhook(args, tmp, f"pg-{tag}", provider, receiver, receiver_url,
                               database_url=server.url_for(name))


def _create_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


async def _run_fluxhook(args: argparse.Namespace, tmp: Path, tag: str, provider: Provider,
                        receiver: Receiver, receiver_url: str, *, database_url: str | None,
                        split: bool = False) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The jobs sit `submitted` for the whole run; the fallback poller must not wake up meanwhile.
    grace = 120 + 3 * (args.jobs + args.warmup) / args.rate
    env = {"FLUXHOOK_DATA_DIR": str(tmp / f"fluxhook-{tag}"), "FLUXHOOK_PUBLIC_URL": base,
           "FLUXHOOK_SECRET_KEY": SECRET_KEY, "FLUXHOOK_SIMULATOR": "off",
           "BFL_BASE_URL": provider.base, "BFL_API_KEY": "bench",
           # The stand-in BFL takes any number of tasks; BFL's own cap (24 active) would hold
           # all but the first 24 jobs queued, and the bench submits them all before calling back.
           "BFL_MAX_ACTIVE_TASKS": "0",
           "FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS": "loopback",
           "FLUXHOOK_POLL_GRACE_SECONDS": str(grace), "FLUXHOOK_LOG_LEVEL": "warning"}
    serve_command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    if database_url is None and not split:
        commands = {"serve": serve_command}
    else:  # the Procfile's topology: the web answers callbacks, a worker process does the rest
        if database_url is not None:
            env["FLUXHOOK_DATABASE_URL"] = database_url
        commands = {"web": [*serve_command, "--no-workers"],
                    "worker": [sys.executable, "-m", "service.cli", "worker"]}
    logs = {name: tmp / f"fluxhook-{tag}-{name}.log" for name in commands}
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name, command in commands.items():
            processes[name] = start(command, env, logs[name])
            if name != "worker":  # the web first: it migrates, and workers need its address
                await wait_up(base, processes[name])
        async with httpx.AsyncClient(base_url=base, timeout=30) as api:
            response = await api.post("/v1/subscriptions", json={"url": f"{receiver_url}/hook",
                                                                 "events": ["job.succeeded"]})
            response.raise_for_status()
            provider_ids = await submitted_jobs(api, args.warmup + args.jobs)
        callbacks = []
        for key in provider_ids:
            webhook_url, secret = provider.webhooks[key]
            callbacks.append(signed_callback(key, webhook_url, secret, f"{provider.base}/img/{key}.png"))
        db_cpu = partial(postgres_cpu_seconds, args.postgres) if database_url is not None else None
        return await drive(callbacks, receiver, rate=args.rate, warmup=args.warmup, drain_s=args.drain,
                           server_pids=[p.pid for p in processes.values()], db_cpu=db_cpu)
    except BaseException:
        for name, log in logs.items():
            print(f"fluxhook {tag} {name} log:\n{log_tail(log)}", file=sys.stderr)
        raise
    finally:
        for process in processes.values():
            stop(process)


async def submitted_jobs(api: httpx.AsyncClient, count: int) -> list[str]:
    """Create `count` jobs and wait until fluxhook has submitted each; their provider ids."""
    job_ids: list[str] = []
    limit = anyio.Semaphore(8)
    body = {"provider": "bfl", "model": MODEL, "input": {"prompt": "bench", "width": 256, "height": 256}}

    async def create() -> None:
        async with limit:
            response = await api.post("/v1/jobs", json=body)
            response.raise_for_status()
            job_ids.append(response.json()["id"])

    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(create)

    provider_ids: dict[str, str] = {}

    async def check(job_id: str) -> None:
        async with limit:
            doc = (await api.get(f"/v1/jobs/{job_id}")).raise_for_status().json()
            if doc["status"] == "submitted":
                provider_ids[job_id] = doc["provider_job_id"]
            elif doc["status"] != "queued":
                raise RuntimeError(f"job {job_id} is {doc['status']}: {doc['error']}")

    with anyio.fail_after(60):
        while len(provider_ids) < count:
            async with anyio.create_task_group() as group:
                for job_id in job_ids:
                    if job_id not in provider_ids:
                        group.start_soon(check, job_id)
            if len(provider_ids) < count:
                await anyio.sleep(0.2)
    return [provider_ids[job_id] for job_id in job_ids]


async def measure(args: argparse.Namespace) -> tuple[dict[str, list[dict[str, Any]]], int]:
    provider = Provider(small_png())
    receiver = Receiver()
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in args.sides}
    runners = {"baseline": run_baseline, "durable": partial(run_baseline, durable=True),
               "fluxhook": run_fluxhook, "fluxhook-split": run_fluxhook_split,
               "fluxhook-pg": run_fluxhook_pg}
    with tempfile.TemporaryDirectory(prefix="fluxhook-bench-notify-") as tmp:
        async with serve(provider.app(), tcp_listener()) as provider_url, \
                serve(receiver.app(), tcp_listener()) as receiver_url:
            provider.base = provider_url
            for round_no in range(args.rounds):
                order = args.sides if round_no % 2 == 0 else args.sides[::-1]  # alternate who goes first
                for side in order:
                    results[side].append(await runners[side](
                        args, Path(tmp), str(round_no), provider, receiver, receiver_url))
    return results, len(provider.image)


def median_over_rounds(runs: list[dict[str, Any]], name: str) -> float | None:
    """The median over rounds of one figure (the figure itself with one round)."""
    values = sorted(r[name] for r in runs if r.get(name) is not None)
    return values[(len(values) - 1) // 2] if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="measured jobs per side and round")
    parser.add_argument("--rate", type=float, default=20.0, help="callbacks per second")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=20, help="jobs sent first and not counted")
    parser.add_argument("--drain", type=float, default=30.0,
                        help="seconds to wait for stragglers after the last callback")
    parser.add_argument("--sides", default=",".join(SIDES),
                        help=f"which sides to measure, comma-separated (default: {','.join(SIDES)})")
    parser.add_argument("--json", action="store_true",
                        help="print only the figures as JSON (the table goes to stderr): for bench/run.py")
    args = parser.parse_args()
    args.sides = tuple(side for side in SIDES if side in args.sides.split(","))
    args.postgres = pg_server.start(durable=True) if "fluxhook-pg" in args.sides else None
    try:
        results, image_bytes = anyio.run(measure, args)
    finally:
        if args.postgres is not None:
            args.postgres.stop()

    out = sys.stderr if args.json else sys.stdout

    def emit(*parts: Any) -> None:
        print(*parts, file=out)

    emit(f"callback -> job.succeeded at the receiver: {args.jobs} jobs (+{args.warmup} warm-up) "
         f"at {args.rate:g}/s x {args.rounds} round(s), {image_bytes}-byte PNG on loopback, "
         f"{os.cpu_count()} cores" + ("; percentiles are medians over rounds" if args.rounds > 1 else "")
         + "\n")
    summary: dict[str, dict[str, Any]] = {}
    for side in args.sides:
        runs = results[side]
        summary[side] = {name: median_over_rounds(runs, name) for name in
                         ("p50_ms", "p90_ms", "p99_ms", "max_ms", "callback_answered_p50_ms",
                          "callback_to_committed_p50_ms", "committed_to_received_p50_ms",
                          "cpu_ms_per_job", "db_cpu_ms_per_job")}
        summary[side]["max_ms"] = max((r["max_ms"] for r in runs if r["max_ms"] is not None), default=None)
        summary[side]["delivered"] = sum(r["delivered"] for r in runs)
        summary[side]["jobs"] = sum(r["jobs"] for r in runs)
        summary[side]["callbacks_refused"] = sum(r["callbacks_refused"] for r in runs)
        s = summary[side]
        emit(f"{side:<11} delivered {s['delivered']:>4}/{s['jobs']:<4}  p50 {_ms(s['p50_ms'])}  "
             f"p90 {_ms(s['p90_ms'])}  p99 {_ms(s['p99_ms'])}  max {_ms(s['max_ms'])}   "
             f"{SIDE_NAMES[side]}"
             + (f"  (callbacks refused: {s['callbacks_refused']})" if s["callbacks_refused"] else ""))
        if args.rounds > 1:
            by_round = ", ".join(str(r["p50_ms"]) for r in runs)
            emit(f"{'':<11} p50 by round: {by_round} ms")
        db = s["db_cpu_ms_per_job"]
        emit(f"{'':<11} CPU per job: server processes {_ms(s['cpu_ms_per_job']).strip()}"
             + ("" if db is None else f", database server {db:.2f} ms"))
    ratios: dict[str, float | None] = {}
    if "fluxhook" in summary and "baseline" in summary:
        for name in ("p50_ms", "p99_ms"):
            flux, base = summary["fluxhook"][name], summary["baseline"][name]
            ratios[name.removesuffix("_ms")] = round(flux / base, 2) if flux and base else None
        emit(f"\nratio fluxhook / baseline:  p50 {ratios['p50']}x   p99 {ratios['p99']}x")
    if "durable" in summary and "baseline" in summary:
        floor, base = summary["durable"]["p50_ms"], summary["baseline"]["p50_ms"]
        ratios["durable_p50"] = round(floor / base, 2) if floor and base else None
        emit(f"ratio durable floor / baseline:  p50 {ratios['durable_p50']}x  (what durability alone costs)")
    for side in ("fluxhook", "fluxhook-split", "fluxhook-pg"):
        if side in summary:
            flux = summary[side]
            emit(f"{side}, p50 of each step: callback answered {_ms(flux['callback_answered_p50_ms'])}, "
                 f"callback -> success committed {_ms(flux['callback_to_committed_p50_ms'])}, "
                 f"committed -> received {_ms(flux['committed_to_received_p50_ms'])} (wall clock, ms steps)")
    splits = {side: split_budget(results, summary, side) for side in ("fluxhook-split", "fluxhook-pg")}
    for side, split in splits.items():
        if split is not None:
            verdict = "PASS" if split["pass"] else "FAIL"
            emit(f"\n{side} p50 above one-process SQLite (fluxhook): {split['p50_above_ms']:+.2f} ms "
                 f"(budget {SPLIT_BUDGET_MS:g} ms: {verdict}; by round: "
                 f"{', '.join(f'{d:+.2f}' for d in split['by_round_ms'])} ms)")
    emit()
    print(json.dumps({"jobs": args.jobs, "warmup": args.warmup, "rate": args.rate, "rounds": args.rounds,
                      "cores": os.cpu_count(), "image_bytes": image_bytes, "ratios": ratios,
                      "postgres_split": splits["fluxhook-pg"], "sqlite_split": splits["fluxhook-split"],
                      "summary": summary, "runs": results}))
    return 0


def split_budget(results: dict[str, list[dict[str, Any]]],
                 summary: dict[str, dict[str, Any]], side: str) -> dict[str, Any] | None:
    """A split side's p50 minus the one-process SQLite side's (medians over rounds), against
    the budget; and the same difference within each round, for the spread."""
    if "fluxhook" not in summary or side not in summary:
        return None
    pg, sqlite = summary[side]["p50_ms"], summary["fluxhook"]["p50_ms"]
    if pg is None or sqlite is None:
        return None
    above = round(pg - sqlite, 2)
    by_round = [round(p["p50_ms"] - s["p50_ms"], 2)
                for p, s in zip(results[side], results["fluxhook"], strict=True)
                if p["p50_ms"] is not None and s["p50_ms"] is not None]
    return {"p50_above_ms": above, "budget_ms": SPLIT_BUDGET_MS, "pass": above <= SPLIT_BUDGET_MS,
            "by_round_ms": by_round}


def _ms(value: float | None) -> str:
    return f"{value:7.2f} ms" if value is not None else "    n/a   "


if __name__ == "__main__":
    sys.exit(main())
