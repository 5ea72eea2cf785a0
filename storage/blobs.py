"""Content-addressed blob store for output images: `<root>/<aa>/<bb>/<sha256>`.

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
from pathlib import Path
from types import TracebackType
from typing import IO

import anyio


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def remove_settled(self, sha256: str, *, settled_s: float) -> bool:
        """Remove a blob unless it was written in the last `settled_s` seconds (by the file
        system's clock, which stamped it); True when it is gone."""
        path = self.path_for(sha256)
        try:
            if time.time() - path.stat().st_mtime < settled_s:
                return False
            path.unlink()
        except FileNotFoundError:
            pass
        return True

    def remove_partials(self) -> int:
        """Remove the partial downloads no live writer holds (left by a crash); how many."""
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

    def writer(self, *, max_bytes: int) -> BlobWriter:
        self._tmp.mkdir(parents=True, exist_ok=True)
        return BlobWriter(self, self._tmp / f"{secrets.token_hex(8)}.part", max_bytes)


class BlobTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


class BlobWriter:
    """Write chunks, then `commit()` for the sha256; leaving the block without it discards."""

    def __init__(self, store: BlobStore, tmp_path: Path, max_bytes: int) -> None:
        self._store = store
        self._tmp_path = tmp_path
        self._max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self._file: IO[bytes] | None = None
        self.size = 0
        self.sha256: str | None = None

    async def __aenter__(self) -> BlobWriter:
        while True:
            handle = open(self._tmp_path, "xb")  # noqa: ASYNC230 - closed in __aexit__
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # held until closed: see the docstring
            if os.fstat(handle.fileno()).st_nlink:
                break
            handle.close()  # a sweep removed it between open and lock: make it again
        self._file = handle
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        self._tmp_path.unlink(missing_ok=True)

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self.size += len(chunk)
        if self.size > self._max_bytes:
            raise BlobTooLarge(self._max_bytes)
        self._hash.update(chunk)
        self._file.write(chunk)

    async def commit(self) -> str:
        assert self._file is not None
        digest = self._hash.hexdigest()
        final = self._store.path_for(digest)
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

        await anyio.to_thread.run_sync(_sync_and_move)
        self.sha256 = digest
        return digest
