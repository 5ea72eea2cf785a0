"""Signed-callback ingest throughput, driven by wrk: three servers in one run on one uvicorn stack.

- `bare`: a Starlette endpoint that only reads the body (bench/baseline_app.py);
- `naive`: what a user writes instead, a durable receiver (bench/naive_receiver.py): per-job
  secret looked up, HMAC over the raw body, one INSERT and one `synchronous=FULL` COMMIT;
- `fluxhook`: `fluxhook serve --no-workers` with its defaults (`synchronous=FULL`), a real web
  process posted BFL "Ready" callbacks for jobs running at the provider.

The callbacks are signed with each job's own secret and distinct (one job, one body), written
beforehand to a file that bench/callbacks.lua cycles through (each wrk thread its own slice).
wrk is Debian's package, installed by scripts/wrk.sh when missing (as root). Each server gets a
warm-up, then `--seconds` of load at `--connections` connections, `--rounds` times; figures are
medians over rounds. fluxhook counts only if sustained: while the load runs, no callback it
recorded waits a second in its inbox to be applied (sampled every 0.2 s: the backlog and the
oldest one's age), and one second after the load every callback it acknowledged (2xx) has been
applied to its job (its outputs known: `ready_at` set) and the inbox is empty.

    .venv/bin/python bench/ingest.py [--seconds 8] [--connections 32] [--rounds 2] [--json]

Prints a table (and with --json only the JSON figures). Not a test: these machines are shared
and noisy, so read the ratios, and run it more than once.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET_KEY = "bench-secret-key"  # noqa: S105 - a throwaway key for a throwaway data dir
SERVERS = ("bare", "naive", "fluxhook")
THREADS = 2  # wrk threads: one per core of the reference machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_wrk() -> str:
    if shutil.which("wrk") is None:
        subprocess.run([str(ROOT / "scripts" / "wrk.sh")], check=True)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not on PATH (scripts/wrk.sh)")
    return wrk


def callback_body(n: int) -> bytes:
    return json.dumps({"id": f"task-{n}", "status": "Ready", "timestamp": "2026-11-22T10:00:00Z",
                       "result": {"sample": f"https://delivery.eu1.bfl.ai/r/{n}/sample.jpeg",
                                  "prompt": f"bench {n}", "seed": n}}).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def write_requests(path: Path, lines: list[tuple[str, str, bytes]]) -> Path:
    """One request a line for bench/callbacks.lua: path, header, value, body (JSON, one line)."""
    with path.open("wb") as out:
        for url_path, sig, body in lines:
            out.write(f"{url_path}\tX-BFL-Signature\t{sig}\t".encode() + body + b"\n")
    return path


def seed_fluxhook(data_dir: Path, count: int) -> list[tuple[str, str, bytes]]:
    """`count` jobs running at BFL, bulk-inserted into a migrated store; their signed callbacks."""
    import anyio

    from service.rules import JOB_RULES
    from service.tokens import CallbackTokens
    from storage.sqlite.database import Database

    async def migrate() -> None:
        db = await Database.open(data_dir / "fluxhook.db", rules=JOB_RULES)
        await db.close()

    data_dir.mkdir(parents=True, exist_ok=True)
    anyio.run(migrate)
    tokens = CallbackTokens(SECRET_KEY)
    now = time.time_ns() // 1_000_000
    rows, tasks, lines = [], [], []
    for n in range(count):
        job_id, secret, body = f"job_{n:012d}", hashlib.sha256(b"secret %d" % n).hexdigest(), callback_body(n)
        rows.append((job_id, "bfl", "flux-pro-1.1", "running", json.dumps({"prompt": f"bench {n}"}), "{}",
                     f"task-{n}", f"http://127.0.0.1:9/v1/get_result?id=task-{n}", secret,
                     now, now, now, now + 3_600_000))
        tasks.append((job_id, "poll", now + 3_000_000, now))
        lines.append((f"/v1/callbacks/bfl/{tokens.issue('bfl', job_id)}", signature(secret, body), body))
    conn = sqlite3.connect(data_dir / "fluxhook.db", isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        """INSERT INTO jobs (id, provider, model, status, input, metadata, provider_job_id, polling_url,
               webhook_secret, created_at, updated_at, submitted_at, deadline_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""", rows)
    conn.executemany("INSERT INTO tasks (job_id, kind, due_at, created_at) VALUES (?, ?, ?, ?)", tasks)
    conn.execute("COMMIT")
    conn.close()
    return lines


def seed_naive(path: Path, count: int) -> list[tuple[str, str, bytes]]:
    from bench.naive_receiver import connect

    conn = connect(str(path))
    lines, rows = [], []
    for n in range(count):
        job_id, secret, body = f"job_{n:012d}", hashlib.sha256(b"naive %d" % n).hexdigest(), callback_body(n)
        rows.append((job_id, secret))
        lines.append((f"/v1/callbacks/bfl/{job_id}", signature(secret, body), body))
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO secrets (job_id, secret) VALUES (?, ?)", rows)
    conn.execute("COMMIT")
    conn.close()
    return lines


def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    url = f"http://127.0.0.1:{command[command.index('--port') + 1] if '--port' in command else command[2]}"
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{command} did not start")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):  # noqa: S310 - http, loopback
                return process
        except urllib.error.HTTPError:  # an answer all the same (the bare app has no /healthz)
            return process
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=30)


def run_wrk(
    wrk: str, port: int, requests: Path, seconds: float, connections: int
) -> tuple[dict[str, Any], str]:
    command = [wrk, f"-t{THREADS}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
               "-s", str(ROOT / "bench" / "callbacks.lua"), f"http://127.0.0.1:{port}", "--",
               str(requests), str(THREADS)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    match = re.search(r"^WRK_JSON (.*)$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no figures:\n{output}")
    raw = json.loads(match.group(1))
    acknowledged = raw["requests"] - raw["status_errors"]
    figures = {
        "requests": raw["requests"], "acknowledged": acknowledged,
        "errors": raw["status_errors"] + raw["connect_errors"] + raw["read_errors"] + raw["write_errors"]
        + raw["timeouts"],
        "per_second": round(acknowledged / (raw["duration_us"] / 1e6), 1),
        "p50_ms": raw["p50_us"] / 1000, "p90_ms": raw["p90_us"] / 1000, "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000, "wraps": raw["wraps"],
    }
    shown = ["wrk", *command[1:]]
    shown[shown.index("-s") + 1] = "bench/callbacks.lua"
    shown[-2] = Path(shown[-2]).name
    return figures, " ".join(shown)


class BacklogWatch:
    """Reads fluxhook's inbox (callbacks recorded, not yet applied) every `every` seconds while
    the load runs, from a connection of its own: the most that waited, and the age of the oldest
    (fluxhook stamps `received_at` when it records one, on this machine's clock)."""

    def __init__(self, db: Path, every: float = 0.2) -> None:
        self.db, self.every = db, every
        self.samples: list[tuple[int, int]] = []  # (callbacks waiting, oldest one's age in ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BacklogWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            while not self._stop.wait(self.every):
                waiting, oldest = conn.execute("SELECT count(*), min(received_at) FROM inbox").fetchone()
                now = time.time_ns() // 1_000_000
                self.samples.append((int(waiting), now - int(oldest) if oldest is not None else 0))
        finally:
            conn.close()

    def figures(self) -> dict[str, Any]:
        return {"backlog_max": max((n for n, _ in self.samples), default=0),
                "oldest_unapplied_ms_max": max((age for _, age in self.samples), default=0),
                "backlog_samples": len(self.samples)}


def backlog(db: Path) -> int:
    """Callbacks recorded and not yet applied."""
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM inbox").fetchone()[0])
    finally:
        conn.close()


def applied_jobs(db: Path) -> int:
    """Jobs whose Ready callback has been applied: their outputs known (`ready_at` set)."""
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM jobs WHERE ready_at IS NOT NULL").fetchone()[0])
    finally:
        conn.close()


def measure(args: argparse.Namespace, wrk: str, tmp: Path) -> tuple[dict[str, list[dict[str, Any]]], str]:
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
    naive_db = tmp / "naive.db"
    naive_lines = seed_naive(naive_db, args.naive_jobs)
    naive_file = write_requests(tmp / "naive.tsv", naive_lines)
    warm_file = write_requests(tmp / "naive-warm.tsv", naive_lines[: args.warmup_jobs])
    command = ""
    for round_no in range(args.rounds):
        # bare and naive: the same distinct signed callbacks
        for name, server in (("bare", [sys.executable, str(ROOT / "bench" / "baseline_app.py")]),
                             ("naive", [sys.executable, str(ROOT / "bench" / "naive_receiver.py")])):
            port = free_port()
            process = start([*server, str(port), str(naive_db)] if name == "naive" else [*server, str(port)])
            try:
                run_wrk(wrk, port, warm_file, args.warmup, args.connections)
                figures, command = run_wrk(wrk, port, naive_file, args.seconds, args.connections)
                results[name].append(figures)
            finally:
                stop(process)
        # fluxhook: fresh jobs each round, a warm-up on jobs of their own
        data_dir = tmp / f"fluxhook-{round_no}"
        lines = seed_fluxhook(data_dir, args.warmup_jobs + args.jobs)
        flux_warm = write_requests(tmp / f"fluxhook-warm-{round_no}.tsv", lines[: args.warmup_jobs])
        flux_file = write_requests(tmp / f"fluxhook-{round_no}.tsv", lines[args.warmup_jobs:])
        port = free_port()
        env = {"FLUXHOOK_DATA_DIR": str(data_dir), "FLUXHOOK_SECRET_KEY": SECRET_KEY,
               "FLUXHOOK_SIMULATOR": "off", "BFL_API_KEY": "bench", "BFL_BASE_URL": "http://127.0.0.1:9",
               "FLUXHOOK_LOG_LEVEL": "warning", "FLUXHOOK_PUBLIC_URL": f"http://127.0.0.1:{port}"}
        serve = [sys.executable, "-m", "service.cli", "serve", "--no-workers", "--port", str(port)]
        process = start(serve, env)
        try:
            run_wrk(wrk, port, flux_warm, args.warmup, args.connections)
            db = data_dir / "fluxhook.db"
            before = applied_jobs(db)
            with BacklogWatch(db) as watch:
                figures, _ = run_wrk(wrk, port, flux_file, args.seconds, args.connections)
            time.sleep(1)  # "applied within a second"
            figures["applied_within_1s"] = applied_jobs(db) - before
            figures["backlog_after_1s"] = backlog(db)
            figures.update(watch.figures())
        finally:
            stop(process)
        # Sustained: no callback waited a second to be applied while the load ran, and a second
        # after it every acknowledged callback had been applied to its job (each names a job of
        # its own, unless a thread wrapped around its slice; in-flight requests cut off by wrk's
        # end may be applied without being counted).
        figures["sustained"] = (figures["wraps"] == 0 and figures["backlog_after_1s"] == 0
                                and figures["oldest_unapplied_ms_max"] <= 1000
                                and figures["applied_within_1s"] >= figures["acknowledged"])
        results["fluxhook"].append(figures)
    return results, command


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in results.items():
        summary[name] = {key: round(statistics.median(r[key] for r in runs), 2)
                         for key in ("per_second", "p50_ms", "p90_ms", "p99_ms")}
        summary[name]["errors"] = sum(r["errors"] for r in runs)
        summary[name]["wraps"] = sum(r["wraps"] for r in runs)
    bare, naive = summary["bare"]["per_second"], summary["naive"]["per_second"]
    for side in summary.values():
        side["vs_bare"] = round(side["per_second"] / bare, 3) if bare else None
        side["vs_naive"] = round(side["per_second"] / naive, 3) if naive else None
    summary["fluxhook"]["sustained"] = all(r["sustained"] for r in results["fluxhook"])
    for key in ("backlog_max", "oldest_unapplied_ms_max"):
        summary["fluxhook"][key] = max(r[key] for r in results["fluxhook"])
    return summary


def stack() -> str:
    """The uvicorn stack every server runs on (the same interpreter and packages)."""
    import importlib.util

    import uvicorn

    from service.event_loop import EVENT_LOOP

    loop = EVENT_LOOP
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn {uvicorn.__version__}, {loop}, {http}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="load per server and round")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up load per server")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=60_000,
                        help="fluxhook: jobs seeded (one distinct signed callback each) per round")
    parser.add_argument("--naive-jobs", type=int, default=150_000,
                        help="distinct signed callbacks for the bare and naive servers (cheap to make)")
    parser.add_argument("--warmup-jobs", type=int, default=5_000)
    parser.add_argument("--json", action="store_true", help="print only the figures, as JSON")
    args = parser.parse_args()
    wrk = ensure_wrk()
    version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.splitlines()[0:1]
    with tempfile.TemporaryDirectory(prefix="fluxhook-ingest-") as tmp:
        results, command = measure(args, wrk, Path(tmp))
    summary = summarize(results)
    report = {
        "cores": os.cpu_count(), "stack": stack(), "wrk": (version or [""])[0].strip(),
        "connections": args.connections, "threads": THREADS, "seconds": args.seconds, "rounds": args.rounds,
        "wrk_command": command, "summary": summary, "runs": results,
        "acceptance": "fluxhook sustained and fluxhook.vs_naive >= 0.5",
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"signed-callback ingest: wrk, {args.connections} connections, {args.seconds:g} s x {args.rounds} "
          f"round(s), {os.cpu_count()} cores, {report['stack']}; medians over rounds\n")
    for name in SERVERS:
        s = summary[name]
        print(f"{name:<9} {s['per_second']:>9.1f} req/s   p50 {s['p50_ms']:>7.2f} ms   "
              f"p99 {s['p99_ms']:>8.2f} ms"
              f"   vs bare {s['vs_bare']:.3f}   vs naive {s['vs_naive']:.3f}   errors {s['errors']}"
              + (f"   wraps {s['wraps']}" if s["wraps"] else ""))
    print("\nfluxhook sustained (every acknowledged callback applied within 1 s):",
          summary["fluxhook"]["sustained"], "  backlog at most", summary["fluxhook"]["backlog_max"],
          " oldest unapplied at most", summary["fluxhook"]["oldest_unapplied_ms_max"], "ms")
    print(f"command: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
