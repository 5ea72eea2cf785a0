"""Signed-callback ingest throughput: fluxhook vs a bare Starlette endpoint, same run, same machine.

Both servers run as separate uvicorn processes on loopback; one load generator
(keep-alive HTTP/1.1 over asyncio streams) posts the same kind of signed BFL "Ready"
callbacks to each. fluxhook's side does all its
real work per callback: token check, HMAC over the raw body, a durable SQLite transaction
(callback row + state change + fetch task). Its workers are off, so downloads don't compete.

    .venv/bin/python bench/ingest.py [--requests 2000] [--concurrency 32] [--rounds 2]

Prints absolute figures for each side and the ratio fluxhook / baseline. Not a test: these
machines are shared and noisy, so read the ratio, and run it more than once.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.ids import new_job_id, new_webhook_secret  # noqa: E402
from service.jobs import Submitted  # noqa: E402
from service.rules import JOB_RULES  # noqa: E402
from service.tokens import CallbackTokens  # noqa: E402
from storage.records import NewJob  # noqa: E402
from storage.sqlite.database import Database  # noqa: E402

SECRET_KEY = "bench-secret-key"  # noqa: S105 - a throwaway key for a throwaway data dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def seed_jobs(data_dir: Path, count: int) -> list[tuple[str, bytes, dict[str, str]]]:
    """`count` submitted jobs, and for each the path, body and headers of its signed callback."""
    store = await Database.open(data_dir / "fluxhook.db", synchronous="NORMAL", rules=JOB_RULES)
    tokens = CallbackTokens(SECRET_KEY)
    requests = []
    now = int(time.time() * 1000)
    for n in range(count):
        secret = new_webhook_secret()
        job_id = new_job_id(now + n)
        await store.jobs.create_job(NewJob(job_id, "bfl", "flux-pro-1.1", {"prompt": f"bench {n}"}, {},
                                      secret, None, None, now + 3_600_000), now=now)
        await store.jobs.record_observation(job_id, Submitted(f"task-{n}"), now=now)
        body = json.dumps({"id": f"task-{n}", "status": "Ready", "timestamp": "2026-11-22T10:00:00Z",
                           "result": {"sample": f"https://delivery.eu1.bfl.ai/r/{n}/sample.jpeg",
                                      "prompt": f"bench {n}", "seed": n}}).encode()
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        requests.append((f"/v1/callbacks/bfl/{tokens.issue('bfl', job_id)}", body,
                         {"X-BFL-Signature": f"sha256={signature}", "Content-Type": "application/json"}))
    await store.close()
    return requests


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_up(base: str) -> None:
    async with httpx.AsyncClient() as client:
        with anyio.fail_after(30):
            while True:
                try:
                    await client.get(base + "/healthz")
                    return
                except httpx.TransportError:
                    await anyio.sleep(0.1)


async def load(base: str, requests: list[tuple[str, bytes, dict[str, str]]], concurrency: int) -> dict:
    """Post every request once over `concurrency` keep-alive connections; figures.

    A hand-rolled HTTP/1.1 client on asyncio streams: an httpx client on this 2-core machine
    saturates near 200 req/s and would measure itself, not the servers.
    """
    import asyncio

    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    failures = 0
    queue = iter(requests)

    async def connection() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for path, body, headers in queue:
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{head}"
                           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
                started = time.perf_counter()
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not status_line.startswith(b"HTTP/1.1 200"):
                    failures += 1
        finally:
            writer.close()

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(connection)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "failures": failures,
        "seconds": round(elapsed, 3),
        "per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


async def measure(args: argparse.Namespace) -> dict:
    results: dict[str, list[dict]] = {"baseline": []}
    for sync in args.synchronous:
        results[f"fluxhook (synchronous={sync})"] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            port = free_port()
            baseline = start([sys.executable, str(ROOT / "bench" / "baseline_app.py"), str(port)], {})
            try:
                await wait_up(f"http://127.0.0.1:{port}")
                dummy = await seed_jobs(Path(tmp) / f"dummy{round_no}", args.requests + args.warmup)
                await load(f"http://127.0.0.1:{port}", dummy[: args.warmup], args.concurrency)
                results["baseline"].append(
                    await load(f"http://127.0.0.1:{port}", dummy[args.warmup:], args.concurrency))
            finally:
                baseline.terminate()
                baseline.wait()
            for sync in args.synchronous:
                data_dir = Path(tmp) / f"fluxhook-{sync}-{round_no}"
                requests = await seed_jobs(data_dir, args.requests + args.warmup)
                port = free_port()
                env = {"FLUXHOOK_DATA_DIR": str(data_dir), "FLUXHOOK_SECRET_KEY": SECRET_KEY,
                       "FLUXHOOK_SIMULATOR": "off", "BFL_API_KEY": "bench",
                       "BFL_BASE_URL": "http://127.0.0.1:9", "FLUXHOOK_LOG_LEVEL": "warning",
                       "FLUXHOOK_SQLITE_SYNCHRONOUS": sync}
                server = start([sys.executable, "-m", "service.cli", "serve", "--no-workers",
                                "--port", str(port)], env)
                try:
                    await wait_up(f"http://127.0.0.1:{port}")
                    await load(f"http://127.0.0.1:{port}", requests[: args.warmup], args.concurrency)
                    results[f"fluxhook (synchronous={sync})"].append(
                        await load(f"http://127.0.0.1:{port}", requests[args.warmup:], args.concurrency))
                finally:
                    server.terminate()
                    server.wait()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--synchronous", default="FULL,NORMAL",
                        help="SQLite synchronous settings to measure fluxhook under (comma list)")
    args = parser.parse_args()
    args.synchronous = [s.strip().upper() for s in args.synchronous.split(",") if s.strip()]
    results = anyio.run(measure, args)
    base = statistics.median(r["per_second"] for r in results["baseline"])
    print(f"signed-callback ingest, {args.requests} requests x {args.rounds} rounds, "
          f"concurrency {args.concurrency}, {os.cpu_count()} cores\n")
    for name, runs in results.items():
        rate = statistics.median(r["per_second"] for r in runs)
        p50 = statistics.median(r["p50_ms"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        failures = sum(r["failures"] for r in runs)
        ratio = f"ratio {rate / base:.2f}x of baseline" if name != "baseline" else ""
        print(f"{name:<30} {rate:>8.1f} req/s   p50 {p50:>6.2f} ms   p99 {p99:>7.2f} ms   "
              f"failures {failures}   {ratio}")
    print("\nraw:", json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
