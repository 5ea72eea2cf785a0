"""Looking inside a blob store from a test, whichever backend: what objects it holds."""

from __future__ import annotations

import time

import obstore

from service.blobs import BlobStore
from storage.blobs.local import LocalBlobStore
from storage.blobs.s3 import S3BlobStore


async def stored_names(blobs: BlobStore) -> list[str]:
    """Every file or object the store holds, temporary ones included, relative to its root."""
    if isinstance(blobs, LocalBlobStore):
        return sorted(str(p.relative_to(blobs.root)) for p in blobs.root.rglob("*") if p.is_file())
    assert isinstance(blobs, S3BlobStore)
    names = []
    async for batch in obstore.list(blobs._store, blobs.prefix + "/" if blobs.prefix else None):
        names += [meta["path"].removeprefix(blobs.prefix + "/") for meta in batch]
    return sorted(names)


async def read_blob(blobs: BlobStore, sha256: str) -> bytes:
    content = await blobs.open(sha256)
    assert content is not None, f"{sha256} is not stored"
    return b"".join([chunk async for chunk in content.chunks])


def age_blobs(blobs: BlobStore, seconds: float) -> None:
    """Run the store's clock `seconds` ahead of real time (0: real time again), so everything
    stored looks that much older to its settling and staleness checks."""
    assert isinstance(blobs, LocalBlobStore | S3BlobStore)
    blobs.wall_clock = lambda: time.time() + seconds
