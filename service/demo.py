"""`make demo`: fluxhook and its embedded provider simulator, a handful of jobs, live progress.

Everything runs on this machine over real loopback HTTP: fluxhook's API, the simulator (speaking
BFL's protocol, mounted at /simulator), its signed callbacks, and fluxhook's fallback poller for
the callbacks the simulator is told to drop.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from service.app import create_app
from service.loopback import bind_loopback, serve, url_of
from service.settings import Settings
from service.simulator import SimulatorConfig, create_simulator_app
from storage.blobs import BlobStore

JOBS: list[dict[str, Any]] = [
    {"model": "flux-pro-1.1", "input": {"prompt": "a lighthouse at dusk, oil painting",
                                        "width": 1024, "height": 768}},
    {"model": "flux-pro-1.1", "input": {"prompt": "a red fox in fresh snow", "width": 512,
                                        "height": 512, "output_format": "png"}},
    {"model": "flux-dev", "input": {"prompt": "isometric tiny city, soft light", "width": 768,
                                    "height": 1024, "steps": 28, "guidance": 3.5}},
    {"model": "flux-pro-1.1", "input": {"prompt": "macro shot of a dew-covered spiderweb",
                                        "width": 1440, "height": 480, "seed": 42}},
    {"model": "flux-pro-1.1-ultra", "input": {"prompt": "a misty fjord at golden hour",
                                              "aspect_ratio": "16:9"}},
    {"model": "flux-dev", "input": {"prompt": "a ceramic teapot, studio photo", "width": 256,
                                    "height": 256, "output_format": "png"}},
]

TERMINAL = {"succeeded", "failed", "cancelled"}


def demo_settings(data_dir: Path, public_url: str) -> Settings:
    env = {
        "FLUXHOOK_DATA_DIR": str(data_dir),
        "FLUXHOOK_PUBLIC_URL": public_url,
        "FLUXHOOK_SIMULATOR": "on",
        "FLUXHOOK_POLL_GRACE_SECONDS": "4",
        "FLUXHOOK_POLL_BASE_SECONDS": "1",
        "FLUXHOOK_POLL_MAX_SECONDS": "2",
        "FLUXHOOK_LOG_LEVEL": "warning",
    }
    return Settings.from_env({**env, **{k: v for k, v in os.environ.items() if k.startswith("FLUXHOOK_")
                                        and k not in ("FLUXHOOK_DATA_DIR", "FLUXHOOK_PUBLIC_URL")}})


async def run_demo(data_dir: Path) -> int:
    sock = bind_loopback()
    base = url_of(sock)
    settings = demo_settings(data_dir, base)
    # A third of the callbacks are dropped and a tenth duplicated: the poller and the dedupe
    # have real work to do, and the summary shows which path completed each job.
    simulator = create_simulator_app(SimulatorConfig(
        latency_s=(1.0, 4.0), callback_drop_rate=0.34, callback_duplicate_rate=0.1, seed=2026))
    app = create_app(settings, simulator=simulator)
    started = time.monotonic()
    async with serve(app, sock), httpx.AsyncClient(base_url=base, timeout=30) as client:
        print(f"fluxhook serving on {base} (simulator at {base}/simulator, data in {data_dir})\n")
        refused = await client.post("/v1/jobs", json={"model": "flux-pro-1.1",
                                                      "input": {"prompt": "x", "width": 1000}})
        print(f"bad input is refused before any provider is paid: HTTP {refused.status_code} "
              f"{refused.json()['error']['message']}\n")
        jobs = []
        for spec in JOBS:
            response = await client.post("/v1/jobs", json={"provider": "bfl", **spec,
                                                           "metadata": {"demo": True}})
            response.raise_for_status()
            jobs.append(response.json())
            print(f"submitted {response.json()['id']}  {spec['model']:<19} {spec['input']['prompt']}")
        print()
        final = await watch(client, [j["id"] for j in jobs], started)
    return summarize(final, settings)


async def watch(client: httpx.AsyncClient, ids: list[str], started: float) -> dict[str, dict]:
    """Print each status change as it happens; return the final documents."""
    seen: dict[str, str] = {}
    latest: dict[str, dict] = {}
    with anyio.fail_after(120):
        while True:
            for job_id in ids:
                doc = (await client.get(f"/v1/jobs/{job_id}")).json()
                latest[job_id] = doc
                if seen.get(job_id) != doc["status"]:
                    seen[job_id] = doc["status"]
                    how = f" (via {doc['completion_source']})" if doc["completion_source"] else ""
                    done = sum(1 for s in seen.values() if s in TERMINAL)
                    print(f"[{time.monotonic() - started:5.1f}s] {job_id}  {doc['status']:<9}{how}"
                          f"   {done}/{len(ids)} done")
            if all(seen.get(j) in TERMINAL for j in ids):
                return latest
            await anyio.sleep(0.25)


def summarize(final: dict[str, dict], settings: Settings) -> int:
    blobs = BlobStore(settings.blob_dir)
    print("\nsummary")
    ok = True
    for doc in final.values():
        expected = doc["status"] == "succeeded" and len(doc["outputs"]) == 1
        ok &= expected
        mark = "ok " if expected else "BAD"
        print(f" {mark} {doc['id']}  {doc['status']:<9} via {doc['completion_source'] or '-':<8} "
              f"{doc['model']}  \"{doc['input']['prompt']}\"")
        for out in doc["outputs"]:
            print(f"       {out['content_type']:<10} {out['bytes']:>8} bytes  sha256 {out['sha256'][:16]}…")
            print(f"       stored at {blobs.path_for(out['sha256'])}")
            print(f"       served at {out['url']}")
        if doc["error"]:
            print(f"       error {doc['error']['code']}: {doc['error']['message']}")
    print("\nevery job finished as expected" if ok else "\nsome jobs did not finish as expected")
    return 0 if ok else 1


def main() -> int:
    data_dir = Path(os.environ.get("FLUXHOOK_DEMO_DIR", "./data/demo")).resolve()
    shutil.rmtree(data_dir, ignore_errors=True)  # a fresh demo every time
    return anyio.run(run_demo, data_dir)


if __name__ == "__main__":
    sys.exit(main())
