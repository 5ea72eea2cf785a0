"""Blobs in S3-compatible object storage (AWS S3, R2, MinIO, GCS's S3 interface), via obstore.

Keys are `<prefix>/<aa>/<bb>/<sha256>`. The sha256 is known only once the last byte is in, so
a writer streams a multipart upload to a temporary key `<prefix>/tmp/<random>` (at most
`PART_BYTES` x `PART_CONCURRENCY` held at a time), then `commit()` copies it server-side to its
final key and deletes the temporary one. A copy is atomic: the final key holds the whole image
or nothing, whatever crashes when. Writing the same bytes again copies the same bytes over them,
which also refreshes the object's `LastModified`, so retention's settling time protects it as it
protects a rewritten file in the local store. What a crash leaves under `tmp/` is removed by
`remove_partials` once older than `PARTIAL_STALE_S`; a multipart upload a crash cut off before
its temporary object existed is invisible and is aborted by the bucket's lifecycle rule
(`AbortIncompleteMultipartUpload`, see the README).

Why obstore (the Rust `object_store` crate): it streams both ways with bounded buffers, does
multipart uploads, copies and presigned URLs, reads AWS's standard variables, ships type hints
(mypy --strict without stubs) and has no Python dependencies to pin against moto's botocore;
aiobotocore would need its own multipart buffering, type stubs, and a botocore pin.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn

import obstore
from obstore.exceptions import BaseError
from obstore.store import S3Store

from storage.errors import BlobTooLarge, BlobUnavailable
from storage.records import BlobContent

if TYPE_CHECKING:
    from obstore import AsyncWritableFile
    from obstore.store import ClientConfig, RetryConfig, S3Config

# What obstore raises: its own errors, and built-in OSError (FileNotFoundError for a missing
# object) and ValueError for some operations.
_BACKEND_ERRORS = (BaseError, OSError, ValueError)

PART_BYTES = 5 * 1024 * 1024  # S3's smallest part
PART_CONCURRENCY = 2
READ_CHUNK = 64 * 1024
PARTIAL_STALE_S = 3600.0  # no single write takes this long (downloads and uploads are capped)


def _failed(exc: BaseException) -> NoReturn:
    # The class name only: obstore's messages may quote request URLs.
    raise BlobUnavailable(f"object storage failed: {type(exc).__name__}") from exc


class S3BlobStore:
    def __init__(
        self, bucket: str, prefix: str, aws: Mapping[str, str], *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.wall_clock = wall_clock
        config: S3Config = {}
        endpoint = aws.get("AWS_ENDPOINT_URL_S3") or aws.get("AWS_ENDPOINT_URL")
        if endpoint:
            config["endpoint"] = endpoint
        region = aws.get("AWS_REGION") or aws.get("AWS_DEFAULT_REGION")
        config["region"] = region or "us-east-1"
        if aws.get("AWS_ACCESS_KEY_ID"):
            config["access_key_id"] = aws["AWS_ACCESS_KEY_ID"]
            config["secret_access_key"] = aws.get("AWS_SECRET_ACCESS_KEY", "")
            if aws.get("AWS_SESSION_TOKEN"):
                config["session_token"] = aws["AWS_SESSION_TOKEN"]
        client: ClientConfig = {"allow_http": bool(endpoint and endpoint.startswith("http://"))}
        # obstore retries transient failures itself; bounded so a dead store fails a download
        # (retried later by the fetcher) or an upload (503) in seconds, not minutes.
        retry: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=20)}
        self._store = S3Store(bucket, config=config, client_options=client, retry_config=retry)

    def _key(self, sha256: str) -> str:
        return self._join(f"{sha256[:2]}/{sha256[2:4]}/{sha256}")

    def _join(self, rest: str) -> str:
        return f"{self.prefix}/{rest}" if self.prefix else rest

    def describe(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{self._key(sha256)}"

    async def exists(self, sha256: str) -> bool:
        try:
            await obstore.head_async(self._store, self._key(sha256))
        except FileNotFoundError:
            return False
        except _BACKEND_ERRORS as exc:
            _failed(exc)
        return True

    async def open(self, sha256: str) -> BlobContent | None:
        try:
            result = await obstore.get_async(self._store, self._key(sha256))
        except FileNotFoundError:
            return None
        except _BACKEND_ERRORS as exc:
            _failed(exc)
        stream = result.stream(min_chunk_size=READ_CHUNK)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream:
                    yield bytes(chunk)
            except _BACKEND_ERRORS as exc:
                _failed(exc)

        return BlobContent(result.meta["size"], chunks())

    async def presigned_url(self, sha256: str, *, expires_s: float) -> str | None:
        try:
            return await obstore.sign_async(
                self._store, "GET", self._key(sha256), timedelta(seconds=expires_s)
            )
        except _BACKEND_ERRORS as exc:
            _failed(exc)

    async def remove(self, sha256: str, *, settled_s: float) -> bool:
        key = self._key(sha256)
        try:
            meta = await obstore.head_async(self._store, key)
            if self.wall_clock() - meta["last_modified"].timestamp() < settled_s:
                return False
            await obstore.delete_async(self._store, key)
        except FileNotFoundError:
            pass
        except _BACKEND_ERRORS as exc:
            _failed(exc)
        return True

    async def remove_partials(self) -> int:
        """Remove temporary objects older than `PARTIAL_STALE_S` (a live writer's are younger)."""
        stale = self.wall_clock() - PARTIAL_STALE_S
        removed = 0
        try:
            async for batch in obstore.list(self._store, self._join("tmp") + "/"):
                old = [meta["path"] for meta in batch if meta["last_modified"].timestamp() < stale]
                if old:
                    await obstore.delete_async(self._store, old)
                    removed += len(old)
        except _BACKEND_ERRORS as exc:
            _failed(exc)
        return removed

    def writer(self, *, max_bytes: int) -> S3BlobWriter:
        return S3BlobWriter(self, self._join(f"tmp/{secrets.token_hex(8)}.part"), max_bytes)

    async def _commit(self, tmp_key: str, sha256: str) -> None:
        try:
            await obstore.copy_async(self._store, tmp_key, self._key(sha256), overwrite=True)
        except _BACKEND_ERRORS as exc:
            _failed(exc)

    async def _discard(self, tmp_key: str) -> None:
        try:
            await obstore.delete_async(self._store, tmp_key)
        except FileNotFoundError:
            pass
        except _BACKEND_ERRORS as exc:
            _failed(exc)

    async def close(self) -> None:
        pass


class S3BlobWriter:
    """Write chunks, then `commit()` for the sha256; leaving the block without it discards."""

    def __init__(self, store: S3BlobStore, tmp_key: str, max_bytes: int) -> None:
        self._store = store
        self._tmp_key = tmp_key
        self._max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self._file: AsyncWritableFile | None = None
        self._uploaded = False
        self.size = 0

    async def __aenter__(self) -> S3BlobWriter:
        self._file = obstore.open_writer_async(
            self._store._store, self._tmp_key, buffer_size=PART_BYTES, max_concurrency=PART_CONCURRENCY
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._uploaded and self._file is not None:
            with contextlib.suppress(*_BACKEND_ERRORS):
                await self._file.close()  # a temporary object to delete, not a dangling upload
        try:
            await self._store._discard(self._tmp_key)
        except BlobUnavailable:
            if exc is None:
                raise  # else the error that ended the block matters more

    async def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self.size += len(chunk)
        if self.size > self._max_bytes:
            raise BlobTooLarge(self._max_bytes)
        self._hash.update(chunk)
        try:
            await self._file.write(chunk)
        except _BACKEND_ERRORS as exc:
            _failed(exc)

    async def commit(self) -> str:
        assert self._file is not None
        digest = self._hash.hexdigest()
        try:
            await self._file.close()  # completes the (multipart) upload of the temporary object
        except _BACKEND_ERRORS as exc:
            _failed(exc)
        self._uploaded = True
        await self._store._commit(self._tmp_key, digest)
        return digest
