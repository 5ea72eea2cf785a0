"""The blob store's contract: what the core needs from wherever output images and uploads live.

Images are content-addressed by their sha256, which is computed while they stream in; writing
the same bytes twice stores them once. Two implementations live in `storage/blobs/`: a local
directory (`local.py`) and S3-compatible object storage (`s3.py`), chosen by
`FLUXHOOK_BLOB_URL` (`open_blob_store`). Nothing outside `storage/` sees a path or a key:
readers get chunks, or a short-lived URL to hand a client, and people get `describe()`.

    async with blobs.writer(max_bytes=limit) as writer:
        async for chunk in source:
            await writer.write(chunk)        # BlobTooLarge past `max_bytes`
        sha256 = await writer.commit()       # leaving the block without commit discards

Implementations raise only `BlobTooLarge` and `BlobUnavailable` (their backend's own
exceptions are translated where they happen).
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

from storage.errors import BlobTooLarge, BlobUnavailable
from storage.records import BlobContent

__all__ = ["BlobContent", "BlobStore", "BlobTooLarge", "BlobUnavailable", "BlobWriter"]


class BlobWriter(Protocol):
    size: int  # bytes written so far

    async def __aenter__(self) -> BlobWriter: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def write(self, chunk: bytes) -> None:
        """Add bytes; `BlobTooLarge` once more than `max_bytes` were written."""

    async def commit(self) -> str:
        """Store what was written under its sha256 (kept as is if already stored); the sha256."""


class BlobStore(Protocol):
    def writer(self, *, max_bytes: int) -> BlobWriter:
        """A writer streaming one blob in (see the module docstring)."""

    async def exists(self, sha256: str) -> bool: ...

    async def open(self, sha256: str) -> BlobContent | None:
        """The blob's bytes streamed out, or None when it is not stored."""

    async def presigned_url(self, sha256: str, *, expires_s: float) -> str | None:
        """A URL anyone may GET the blob from for `expires_s` seconds; None when this store
        cannot make one (a local directory)."""

    async def remove(self, sha256: str, *, settled_s: float) -> bool:
        """Remove a blob unless it was (re)written in the last `settled_s` seconds, by the
        store's own clock; True when it is gone."""

    async def remove_partials(self) -> int:
        """Remove what interrupted writes left that no live writer holds; how many."""

    def describe(self, sha256: str) -> str:
        """Where the blob lives, for people (`file:///...`, `s3://bucket/key`)."""

    async def close(self) -> None: ...
