"""A large output streams from its URL into the blob store without being held in memory."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from service.downloads import download_image
from service.loopback import serve
from storage.blobs.local import LocalBlobStore
from tests.blobs import read_blob

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
CHUNK = b"\x89PNG\r\n\x1a\n" + os.urandom(64 * 1024 - 8)
FILLER = os.urandom(64 * 1024)
CHUNKS = 30 * MiB // len(FILLER)


def image_server() -> Starlette:
    async def body() -> AsyncIterator[bytes]:
        yield CHUNK
        for _ in range(CHUNKS - 1):
            yield FILLER

    async def image(_request: object) -> StreamingResponse:
        return StreamingResponse(body(), media_type="image/png")

    return Starlette(routes=[Route("/image.png", image)])


async def test_a_30_mib_output_downloads_with_its_sha256_and_a_bounded_heap(tmp_path: Path) -> None:
    expected = hashlib.sha256(CHUNK + FILLER * (CHUNKS - 1)).hexdigest()
    blobs = LocalBlobStore(tmp_path / "blobs")
    async with serve(image_server()) as base, httpx.AsyncClient() as client:
        tracemalloc.start()
        try:
            got = await download_image(client, f"{base}/image.png", blobs=blobs,
                                       allowed_hosts=("127.0.0.1",), max_bytes=64 * MiB, timeout=30)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert got.sha256 == expected
    assert got.bytes == len(CHUNK) + len(FILLER) * (CHUNKS - 1)
    assert hashlib.sha256(await read_blob(blobs, got.sha256)).hexdigest() == expected
    # the server streams from this process too: both sides together hold a few chunks only
    assert peak < 8 * MiB, f"downloading held {peak} bytes"
