"""`make bench`: every benchmark in one run, the figures written as JSON to compare runs over time.

    .venv/bin/python bench/run.py [--out bench/results/latest.json] [--quick]

Runs, each as its own process (each is also runnable alone):
- bench/ingest.py --json: signed-callback ingest with wrk, bare vs naive durable vs fluxhook;
- bench/notify.py: provider callback -> downstream `job.succeeded`, fluxhook vs a bare baseline;
- bench/idle.py: idle CPU of `fluxhook serve` and `fluxhook tick` with 100,000 jobs in flight;
- bench/cold_start.py: `fluxhook serve` to its first 200, `fluxhook tick`;
- bench/download.py --json: a 20 MB output downloaded into the blob store vs a raw httpx stream.

and writes one JSON document: the machine's core count, the git revision, the date, and per
benchmark the exact command, its figures (or its error), and how long it took. `--quick` runs
each with small figures (a smoke run: its numbers are not for comparing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Latency on this shared 2-core machine moves by a few milliseconds from one round to the next:
# the notify figures (and the split budgets judged on them) are medians over three rounds.
FULL = {
    "notify": ["--rounds", "3"],
}
QUICK = {
    "ingest": ["--seconds", "2", "--warmup", "1", "--rounds", "1", "--jobs", "5000", "--naive-jobs", "5000",
               "--warmup-jobs", "500"],
    "notify": ["--jobs", "30", "--warmup", "5"],
    "idle": ["--jobs", "2000", "--small", "200", "--seconds", "3", "--ticks", "2"],
    "cold_start": ["--runs", "2"],
    "download": ["--mb", "4", "--runs", "2"],
}


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)  # noqa: S607
    return result.stdout.strip()


def run(name: str, extra: list[str]) -> dict[str, Any]:
    script = ROOT / "bench" / f"{name}.py"
    # ingest, notify and download print a table unless asked for JSON alone; the others print JSON
    args = [*extra, "--json"] if name in ("ingest", "notify", "download") else list(extra)
    command = [sys.executable, str(script.relative_to(ROOT)), *args]
    shown = " ".join([".venv/bin/python", *command[1:]])
    print(f"== {shown}", file=sys.stderr, flush=True)
    began = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    entry: dict[str, Any] = {"command": shown, "seconds": round(time.monotonic() - began, 1),
                             "exit_status": result.returncode}
    if result.returncode != 0:
        entry["error"] = (result.stderr or result.stdout)[-2000:]
    else:
        try:
            entry["figures"] = json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            entry["error"] = f"its output is not JSON ({exc}): {result.stdout[-1000:]}"
    sys.stderr.write(json.dumps(entry.get("figures", entry), indent=2) + "\n")
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--quick", action="store_true", help="small figures: a smoke run")
    parser.add_argument("--only", default="ingest,notify,idle,cold_start,download",
                        help="comma list of benchmarks")
    args = parser.parse_args()
    began = datetime.datetime.now(datetime.UTC)
    report: dict[str, Any] = {
        "date": began.isoformat(timespec="seconds"),
        "revision": git("rev-parse", "HEAD"),
        "revision_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "cores": os.cpu_count(),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "quick": args.quick,
        "command": " ".join(["make bench"] if sys.argv[1:] == [] else [".venv/bin/python bench/run.py",
                                                                       *sys.argv[1:]]),
        "benchmarks": {},
    }
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        report["benchmarks"][name] = run(name, QUICK.get(name, []) if args.quick else FULL.get(name, []))
    report["seconds"] = round((datetime.datetime.now(datetime.UTC) - began).total_seconds(), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {args.out}", file=sys.stderr)
    return 1 if any("error" in b for b in report["benchmarks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
