"""Output download: fluxhook's download path against a raw httpx stream that also hashes and
fsyncs, for one large image (issue 10, acceptance 5). Prints JSON.

    .venv/bin/python bench/download.py [--mib 20] [--rounds 9]

A separate process serves the image over loopback HTTP (http.server, sending the file with
sendfile(2) so the server is not what limits either side). Each round downloads it once
each way, in alternating order, into a fresh directory on the same disk:

- `raw`: httpx `client.stream`, sha256 over each chunk, written to a file, flushed and fsynced:
  the least anyone would do by hand to keep an image safely;
- `fluxhook`: `service.downloads.download_image` into the local blob store, as the worker does
  it: the URL and its host checked, the bytes sniffed as an image, the size capped, streamed
  into a content-addressed blob with its sha256, fsynced with its directory.

The figure is the median of each side's seconds, and `ratio` = raw seconds / fluxhook seconds
(1.0: as fast as by hand; the target is >= 0.9). Memory: the Python heap's peak during one
fluxhook download (tracemalloc), which stays a few chunks whatever the image's size.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.downloads import download_image  # noqa: E402
from storage.blobs.local import LocalBlobStore  # noqa: E402

MiB = 1024 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_image(path: Path, size: int) -> str:
    """An image-shaped file (PNG magic, then random bytes); its sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        handle.write(PNG_MAGIC)
        digest.update(PNG_MAGIC)
        left = size - len(PNG_MAGIC)
        while left > 0:
            chunk = os.urandom(min(left, MiB))
            handle.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def run_server(directory: Path, port: int) -> None:
    """The image server's process: http.server whose file bodies go out with sendfile(2)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        def copyfile(self, source, outputfile):  # type: ignore[no-untyped-def]
            self.wfile.flush()
            self.connection.sendfile(source)

        def log_message(self, format, *args):  # type: ignore[no-untyped-def]
            pass

    handler = functools.partial(Handler, directory=str(directory))
    ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()


def serve(directory: Path, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(directory), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
            return server
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise RuntimeError("the image server did not start")


async def raw_download(client: httpx.AsyncClient, url: str, target: Path) -> str:
    digest = hashlib.sha256()
    with target.open("wb") as handle:
        async with client.stream("GET", url) as response:
            response.raise_for_status()
            async for chunk in response.aiter_bytes():
                digest.update(chunk)
                handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


async def fluxhook_download(client: httpx.AsyncClient, url: str, root: Path, size: int) -> str:
    blobs = LocalBlobStore(root)
    try:
        got = await download_image(client, url, blobs=blobs, allowed_hosts=("127.0.0.1",),
                                   max_bytes=size + MiB, timeout=60)
    finally:
        await blobs.close()
    return got.sha256


async def measure(url: str, work: Path, size: int, expected: str, rounds: int) -> dict[str, object]:
    times: dict[str, list[float]] = {"raw": [], "fluxhook": []}
    async with httpx.AsyncClient(timeout=60) as client:
        # one warm-up each: connections, page cache, imports
        await raw_download(client, url, work / "warm-raw")
        await fluxhook_download(client, url, work / "warm-blobs", size)
        for round_ in range(rounds):
            order = ("raw", "fluxhook") if round_ % 2 == 0 else ("fluxhook", "raw")
            for side in order:
                target = work / f"{side}-{round_}"
                began = time.perf_counter()
                if side == "raw":
                    digest = await raw_download(client, url, target)
                else:
                    digest = await fluxhook_download(client, url, target, size)
                times[side].append(time.perf_counter() - began)
                if digest != expected:
                    raise RuntimeError(f"{side} stored sha256 {digest}, expected {expected}")
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        tracemalloc.start()
        await fluxhook_download(client, url, work / "traced", size)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    raw, flux = statistics.median(times["raw"]), statistics.median(times["fluxhook"])
    return {
        "image_bytes": size,
        "rounds": rounds,
        "raw_seconds_p50": round(raw, 4),
        "fluxhook_seconds_p50": round(flux, 4),
        "raw_mib_per_s": round(size / MiB / raw, 1),
        "fluxhook_mib_per_s": round(size / MiB / flux, 1),
        "ratio": round(raw / flux, 3),
        "target_ratio": 0.9,
        "fluxhook_heap_peak_bytes": peak,
        "raw_seconds": [round(t, 4) for t in times["raw"]],
        "fluxhook_seconds": [round(t, 4) for t in times["fluxhook"]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--mib", type=int, default=20, help="image size in MiB")
    parser.add_argument("--rounds", type=int, default=9, help="downloads per side")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        run_server(args.serve, args.port)
        return 0
    size = args.mib * MiB
    with tempfile.TemporaryDirectory(prefix="fluxhook-bench-download-", dir=ROOT / "data"
                                     if (ROOT / "data").is_dir() else None) as tmp:
        work = Path(tmp)
        served = work / "served"
        served.mkdir()
        expected = make_image(served / "image.png", size)
        port = free_port()
        server = serve(served, port)
        try:
            figures = asyncio.run(measure(f"http://127.0.0.1:{port}/image.png", work, size, expected,
                                          args.rounds))
        finally:
            server.kill()
            server.wait()
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
