"""Output download: fluxhook's streaming download into its blob store vs a raw httpx stream.

Both sides fetch the same 20 MB image (a PNG signature and random bytes) from a plain HTTP server
in a process of its own (`python -m http.server` on loopback), with the same `httpx.AsyncClient`:

- `raw`: `client.stream("GET")`, every chunk hashed (sha256) and written to a file, then flushed,
  fsynced, renamed into place and its directory fsynced: what a careful hand-written download
  does;
- `fluxhook`: service/downloads.py `download_image` into a LocalBlobStore (storage/blobs/local.py),
  as the fetcher runs it: URL and status checks, the type sniffed from the first bytes, the size
  capped while streaming, hashed, fsynced, renamed.

The sides alternate for `--runs` rounds; the figures are median seconds, the ratio raw/fluxhook
(1.0: as fast as raw httpx; the acceptance is at least 0.9), and the most Python memory each side
held at once (tracemalloc peak): streaming keeps it to a few chunks, whatever the image's size.

    .venv/bin/python bench/download.py [--mb 20] [--runs 7] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_image(path: Path, megabytes: int) -> None:
    with path.open("wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        for _ in range(megabytes):
            out.write(os.urandom(1 << 20))


async def raw(client: httpx.AsyncClient, url: str, target: Path) -> str:
    digest = hashlib.sha256()
    part = target / f"{os.urandom(8).hex()}.part"
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        with part.open("wb") as out:
            async for chunk in response.aiter_bytes():
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    final = target / digest.hexdigest()
    os.replace(part, final)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest.hexdigest()


async def measure(args: argparse.Namespace, tmp: Path, url: str, expected: str) -> dict[str, Any]:
    from service.downloads import download_image
    from storage.blobs.local import LocalBlobStore

    times: dict[str, list[float]] = {"raw": [], "fluxhook": []}
    peaks: dict[str, int] = {"raw": 0, "fluxhook": 0}
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(100):  # the server is up once it answers
            try:
                (await client.head(url)).raise_for_status()
                break
            except httpx.TransportError:
                await anyio.sleep(0.05)
        blobs = LocalBlobStore(tmp / "blobs")
        (tmp / "raw").mkdir()

        async def fluxhook() -> str:
            done = await download_image(client, url, blobs=blobs, allowed_hosts=("127.0.0.1",),
                                        max_bytes=(args.mb + 1) << 20, timeout=60)
            return done.sha256

        sides: dict[str, Callable[[], Awaitable[str]]] = {
            "raw": lambda: raw(client, url, tmp / "raw"), "fluxhook": fluxhook}
        for name, side in sides.items():  # warm-up: the file in the page cache, connections open
            assert await side() == expected, name
        for round_no in range(args.runs):
            order = list(sides) if round_no % 2 == 0 else list(reversed(sides))
            for name in order:
                tracemalloc.start()
                began = time.perf_counter()
                assert await sides[name]() == expected, name
                times[name].append(time.perf_counter() - began)
                peaks[name] = max(peaks[name], tracemalloc.get_traced_memory()[1])
                tracemalloc.stop()
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "megabytes": args.mb, "runs": args.runs, "cores": os.cpu_count(),
        "seconds_median": {name: round(value, 4) for name, value in median.items()},
        "mb_per_second": {name: round(args.mb / value, 1) for name, value in median.items()},
        "ratio_raw_over_fluxhook": round(median["raw"] / median["fluxhook"], 3),
        "python_peak_bytes": peaks,
        "seconds": {name: [round(v, 4) for v in values] for name, values in times.items()},
        "acceptance": "ratio_raw_over_fluxhook >= 0.9, python_peak_bytes.fluxhook far below the image",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--mb", type=int, default=20, help="image size in MiB")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print only the figures, as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fluxhook-download-") as tmp:
        image = Path(tmp) / "www" / "image.png"
        image.parent.mkdir()
        make_image(image, args.mb)
        expected = hashlib.sha256(image.read_bytes()).hexdigest()
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                  cwd=image.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            report = anyio.run(measure, args, Path(tmp), f"http://127.0.0.1:{port}/image.png", expected)
        finally:
            server.terminate()
            server.wait(timeout=10)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"download of a {args.mb} MiB image over loopback, median of {args.runs} runs, "
          f"{report['cores']} cores\n")
    for name in ("raw", "fluxhook"):
        print(f"{name:<9} {report['seconds_median'][name] * 1000:8.1f} ms"
              f"  {report['mb_per_second'][name]:7.1f} MiB/s"
              f"  python peak {report['python_peak_bytes'][name] / 1024:8.0f} KiB")
    print(f"\nraw / fluxhook: {report['ratio_raw_over_fluxhook']:.3f} (acceptance: >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
