"""Cold start: how long `fluxhook serve` takes to its first 200 on /healthz, and `fluxhook tick`
with nothing due, with the simulator off (issue 10, acceptance 4). Prints JSON.

    .venv/bin/python bench/cold_start.py [--runs 7]

Each figure is the median of `--runs` runs, each a new process. A fresh data dir is migrated by
the first process that opens it, so both are measured: `fresh` (a new data dir per run: what a
first deploy pays once) and `existing` (a data dir already migrated: what every later start
and every serverless cold start pays, and the figure the acceptance line is about).
For the imports alone: `python -X importtime -m service.cli tick 2> imports.txt`. The processes
run with compiled bytecode (PYCACHE below), as a deployment's do.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Compiled bytecode, as an installed package has (pip compiles on install): where the
# environment says not to write any (PYTHONDONTWRITEBYTECODE), every start would compile
# fluxhook's modules from source, ~80 ms no deployment pays. Kept out of the tree.
PYCACHE = Path(tempfile.gettempdir()) / "fluxhook-bench-pycache"


def env_for(data_dir: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {
        **environ,
        "PYTHONPYCACHEPREFIX": str(PYCACHE),
        "FLUXHOOK_DATA_DIR": str(data_dir),
        "FLUXHOOK_PUBLIC_URL": "http://127.0.0.1:9",  # tick needs one; nothing calls it
        "FLUXHOOK_SIMULATOR": "off",
        "FLUXHOOK_SECRET_KEY": "cold-start-secret-key",
        "BFL_BASE_URL": "http://127.0.0.1:9",
        "BFL_API_KEY": "cold-start-key",
        "FLUXHOOK_LOG_LEVEL": "warning",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_to_first_200(data_dir: Path) -> float:
    """Seconds from spawning `fluxhook serve` to its first 200 on /healthz."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        cwd=ROOT, env=env_for(data_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"fluxhook serve exited with {process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - began
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.005)
    finally:
        process.terminate()
        process.wait(timeout=30)


def tick(data_dir: Path) -> float:
    """Seconds `fluxhook tick` takes, start to exit."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "service.cli", "tick"], cwd=ROOT, env=env_for(data_dir),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def python_alone() -> float:
    """Seconds the interpreter takes to start and exit: the floor under both figures."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env_for(Path(".")), check=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fluxhook-cold-") as tmp:
        root = Path(tmp)
        existing = root / "existing"
        tick(existing)  # migrates it, and warms the page cache for the code
        figures: dict[str, list[float]] = {
            "serve_first_200_existing_s": [], "serve_first_200_fresh_s": [],
            "tick_existing_s": [], "tick_fresh_s": [], "python_alone_s": [],
        }
        for run in range(args.runs):
            figures["serve_first_200_existing_s"].append(serve_to_first_200(existing))
            figures["serve_first_200_fresh_s"].append(serve_to_first_200(root / f"fresh-serve-{run}"))
            figures["tick_existing_s"].append(tick(existing))
            figures["tick_fresh_s"].append(tick(root / f"fresh-tick-{run}"))
            figures["python_alone_s"].append(python_alone())
    print(json.dumps({
        "runs": args.runs,
        "cores": os.cpu_count(),
        "median": {name: round(statistics.median(values), 3) for name, values in figures.items()},
        "min": {name: round(min(values), 3) for name, values in figures.items()},
        "acceptance": "serve_first_200_existing_s <= 0.35 and tick_existing_s <= 0.3 (simulator off)",
    }, indent=2))


if __name__ == "__main__":
    main()
