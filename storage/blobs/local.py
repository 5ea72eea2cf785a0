"""Blobs in a local directory: `<root>/<aa>/<bb>/<sha256>`.

Bytes are streamed to a temporary file while hashed, fsynced, then atomically renamed into
place, so a crash leaves either the whole blob or nothing (plus a stray temp file). A writer
holds an exclusive `flock` on its temp file until it is renamed or removed, so a process
starting up removes the temp files nobody holds (`remove_partials`) without touching the
downloads another live process sharing the directory is making.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

import anyio

from storage.errors import BlobTooLarge, BlobUnavailable
from storage.records import BlobContent

CHUNK = 64 * 1024
T = TypeVar("T")


async def _off_loop(fn: Callable[[], T]) -> T:
    """Run file-system work in a thread; an OSError becomes BlobUnavailable."""
    try:
        return await anyio.to_thread.run_sync(fn)
    except OSError as exc:
        raise BlobUnavailable(f"blob directory failed: {type(exc).__name__}") from exc


class LocalBlobStore:
    def __init__(self, root: Path, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.wall_clock = wall_clock  # what `remove` compares modification times with
        self._tmp = root / "tmp"

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def describe(self, sha256: str) -> str:
        return self._path(sha256).as_uri()

    async def exists(self, sha256: str) -> bool:
        return await _off_loop(self._path(sha256).is_file)

    async def open(self, sha256: str) -> BlobContent | None:
        path = self._path(sha256)
        try:
            handle = await anyio.open_file(path, "rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BlobUnavailable(f"blob directory failed: {type(exc).__name__}") from exc
        size = os.fstat(handle.wrapped.fileno()).st_size  # of the file opened: renames cannot change it

        async def chunks() -> AsyncIterator[bytes]:
            async with handle:
                try:
                    while chunk := await handle.read(CHUNK):
                        yield chunk
                except OSError as exc:
                    raise BlobUnavailable(f"blob directory failed: {type(exc).__name__}") from exc

        return BlobContent(size, chunks())

    async def presigned_url(self, sha256: str, *, expires_s: float) -> str | None:
        return None

    async def remove(self, sha256: str, *, settled_s: float) -> bool:
        path = self._path(sha256)

        def _remove() -> bool:
            try:
                if self.wall_clock() - path.stat().st_mtime < settled_s:
                    return False
                path.unlink()
            except FileNotFoundError:
                pass
            return True

        return await _off_loop(_remove)

    async def remove_partials(self) -> int:
        return await _off_loop(self._remove_partials)

    def _remove_partials(self) -> int:
        removed = 0
        for path in self._tmp.glob("*.part") if self._tmp.is_dir() else ():
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # finished or discarded meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer's
            else:
                path.unlink(missing_ok=True)
                removed += 1
            finally:
                os.close(fd)
        return removed

    def writer(self, *, max_bytes: int) -> LocalBlobWriter:
        return LocalBlobWriter(self, self._tmp / f"{secrets.token_hex(8)}.part", max_bytes)

    async def close(self) -> None:
        pass


class LocalBlobWriter:
    """Write chunks, then `commit()` for the sha256; leaving the block without it discards."""

    def __init__(self, store: LocalBlobStore, tmp_path: Path, max_bytes: int) -> None:
        self._store = store
        self._tmp_path = tmp_path
        self._max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self._file: IO[bytes] | None = None
        self.size = 0

    async def __aenter__(self) -> LocalBlobWriter:
        def _open() -> IO[bytes]:
            self._tmp_path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                handle = open(self._tmp_path, "xb")  # closed in __aexit__
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # held until closed: see the docstring
                if os.fstat(handle.fileno()).st_nlink:
                    return handle
                handle.close()  # a sweep removed it between open and lock: make it again

        self._file = await _off_loop(_open)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        self._tmp_path.unlink(missing_ok=True)

    async def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self.size += len(chunk)
        if self.size > self._max_bytes:
            raise BlobTooLarge(self._max_bytes)
        self._hash.update(chunk)
        try:
            self._file.write(chunk)  # buffered; fsynced once, in commit()
        except OSError as exc:
            raise BlobUnavailable(f"blob directory failed: {type(exc).__name__}") from exc

    async def commit(self) -> str:
        assert self._file is not None
        digest = self._hash.hexdigest()
        final = self._store._path(digest)
        handle = self._file

        def _sync_and_move() -> None:
            handle.flush()
            os.fsync(handle.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp_path, final)  # before close, which lets a sweep at the temp file
            handle.close()
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

        await _off_loop(_sync_and_move)
        return digest
