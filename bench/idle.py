"""Idle cost with many jobs in flight (issue 10, acceptance 3). Prints JSON.

    .venv/bin/python bench/idle.py [--jobs 100000] [--small 1000] [--seconds 10] [--ticks 9]

Seeds `--jobs` jobs in flight straight into a fresh SQLite data dir (migrated by the store, then
bulk inserts): each job sent to the provider and running, with its fallback poll due 10 to 60
minutes on (nothing falls due while this runs), its attempt, two events and one delivered
notification.
Then, with the simulator off:
- `fluxhook serve` is started and left idle; its CPU over `--seconds` is read from
  /proc/<pid>/stat (utime + stime) and given as a share of one core (at `--jobs`, the
  acceptance figure, and at `--small` for comparison);
- `fluxhook tick` (nothing due) is timed `--ticks` times at `--small` and at `--jobs` jobs,
  alternating, after one untimed tick of each: the median of each, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cold_start import env_for, free_port  # noqa: E402


async def _migrate(data_dir: Path) -> Path:
    from service.rules import JOB_RULES
    from storage.sqlite.database import Database

    path = data_dir / "fluxhook.db"
    db = await Database.open(path, rules=JOB_RULES)
    await db.close()
    return path


def seed(data_dir: Path, jobs: int) -> None:
    """`jobs` jobs in flight, written in a few bulk transactions."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = anyio.run(_migrate, data_dir)
    now = time.time_ns() // 1_000_000
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    job_rows, task_rows, attempt_rows, event_rows, delivery_rows = [], [], [], [], []
    for n in range(jobs):
        job_id = f"job_{n:012d}"
        created = now - 60_000 + n % 60_000
        job_rows.append((job_id, "bfl", "flux-dev", "running", '{"prompt":"a lighthouse"}', "{}",
                         f"bfl-{n}", f"http://127.0.0.1:9/v1/get_result?id=bfl-{n}", "whsec",
                         created, created, created, created + 7_200_000, 1, "https://example.invalid/hook",
                         '["job.succeeded"]'))
        task_rows.append((job_id, "poll", now + 600_000 + (n * 7919) % 3_000_000, created))
        attempt_rows.append((job_id, "bfl", "accepted", f"bfl-{n}", created))
        for seq_in_job, kind in ((1, "job.submitted"), (2, "job.running")):
            event_rows.append((f"evt_{n:012d}_{seq_in_job}", job_id, seq_in_job, kind,
                               b'{"type":"' + kind.encode() + b'","data":{}}', created))
        delivery_rows.append((f"dlv_{n:012d}", f"evt_{n:012d}_1", job_id, "https://example.invalid/hook",
                              "delivered", 1, created, created))
    conn.executemany(
        """INSERT INTO jobs (id, provider, model, status, input, metadata, provider_job_id, polling_url,
               webhook_secret, created_at, updated_at, submitted_at, deadline_at, event_count,
               webhook_url, webhook_events) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        job_rows)
    conn.executemany("INSERT INTO tasks (job_id, kind, due_at, created_at) VALUES (?, ?, ?, ?)", task_rows)
    conn.executemany(
        "INSERT INTO attempts (job_id, provider, outcome, provider_job_id, at) VALUES (?, ?, ?, ?, ?)",
        attempt_rows)
    conn.executemany(
        "INSERT INTO events (id, job_id, job_seq, type, body, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        event_rows)
    conn.executemany(
        """INSERT INTO deliveries (id, event_seq, job_id, url, status, attempts, created_at, delivered_at)
           SELECT ?, seq, ?, ?, ?, ?, ?, ? FROM events WHERE id = ?""",
        [(d[0], d[2], d[3], d[4], d[5], d[6], d[7], d[1]) for d in delivery_rows])
    conn.execute("COMMIT")
    conn.close()


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the line)


def idle_cpu(data_dir: Path, seconds: float) -> float:
    """Percent of one core `fluxhook serve` uses while idle over `seconds`."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        cwd=ROOT, env=env_for(data_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("fluxhook serve did not start")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        time.sleep(2)  # start-up settles
        hz = os.sysconf("SC_CLK_TCK")
        before, began = _cpu_ticks(process.pid), time.monotonic()
        time.sleep(seconds)
        used, elapsed = _cpu_ticks(process.pid) - before, time.monotonic() - began
        return 100 * used / hz / elapsed
    finally:
        process.terminate()
        process.wait(timeout=30)


def tick_seconds(data_dir: Path) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "service.cli", "tick"], cwd=ROOT, env=env_for(data_dir),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--ticks", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fluxhook-idle-") as tmp:
        small, large = Path(tmp) / "small", Path(tmp) / "large"
        began = time.perf_counter()
        seed(small, args.small)
        seed(large, args.jobs)
        seeded = time.perf_counter() - began
        tick_seconds(small)  # warm the page cache for the code, and for each database
        tick_seconds(large)
        small_ticks, large_ticks = [], []
        for _ in range(args.ticks):  # alternating: a machine that gets busier weighs on both
            small_ticks.append(tick_seconds(small))
            large_ticks.append(tick_seconds(large))
        cpu_small = idle_cpu(small, args.seconds)
        cpu = idle_cpu(large, args.seconds)
    small_tick, large_tick = statistics.median(small_ticks), statistics.median(large_ticks)
    print(json.dumps({
        "jobs_in_flight": args.jobs,
        "cores": os.cpu_count(),
        "seed_seconds": round(seeded, 1),
        "serve_idle_cpu_percent": round(cpu, 2),
        "serve_idle_cpu_percent_at_small": round(cpu_small, 2),
        "idle_seconds": args.seconds,
        "tick_nothing_due_s": {str(args.small): round(small_tick, 3), str(args.jobs): round(large_tick, 3)},
        "tick_ratio": round(large_tick / small_tick, 2),
        "acceptance": "serve_idle_cpu_percent <= 1 and tick_ratio <= 1.2",
    }, indent=2))


if __name__ == "__main__":
    main()
