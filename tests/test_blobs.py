"""The blob store contract, against each backend: a local directory and S3 (moto's server)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.lowlevel
import httpx
import pytest

from service.app import open_context
from service.blobs import BlobStore, BlobTooLarge, BlobUnavailable
from service.settings import Settings
from storage.blobs import open_blob_store
from storage.blobs.local import LocalBlobStore
from tests.blobs import age_blobs, read_blob, stored_names
from tests.conftest import s3_env
from tests.e2e import ROOT, free_port

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


@pytest.fixture
def blob_env(blob_backend: dict[str, str]) -> dict[str, str]:
    return blob_backend


@pytest.fixture
async def blobs(make_settings: Callable[..., Settings]) -> AsyncIterator[BlobStore]:
    settings = make_settings()
    store = open_blob_store(settings.blob_location, aws=settings.aws)
    yield store
    await store.close()


async def put(blobs: BlobStore, *chunks: bytes) -> str:
    async with blobs.writer(max_bytes=100 * MiB) as writer:
        for chunk in chunks:
            await writer.write(chunk)
        return await writer.commit()


async def test_a_blob_is_stored_under_its_sha256_and_read_back(blobs: BlobStore):
    digest = await put(blobs, b"first half ", b"second half")

    assert digest == hashlib.sha256(b"first half second half").hexdigest()
    assert await blobs.exists(digest)
    content = await blobs.open(digest)
    assert content is not None and content.size == len(b"first half second half")
    assert b"".join([chunk async for chunk in content.chunks]) == b"first half second half"
    assert await stored_names(blobs) == [f"{digest[:2]}/{digest[2:4]}/{digest}"]  # nothing temporary left


async def test_writing_the_same_bytes_twice_stores_them_once(blobs: BlobStore):
    first = await put(blobs, b"same image")
    second = await put(blobs, b"same", b" image")

    assert first == second
    assert await stored_names(blobs) == [f"{first[:2]}/{first[2:4]}/{first}"]


async def test_a_write_left_without_commit_stores_nothing(blobs: BlobStore):
    with pytest.raises(RuntimeError):
        async with blobs.writer(max_bytes=1000) as writer:
            await writer.write(b"half an image")
            raise RuntimeError("the download broke off")

    assert await stored_names(blobs) == []


async def test_a_blob_over_the_limit_is_refused_and_nothing_is_kept(blobs: BlobStore):
    with pytest.raises(BlobTooLarge):
        async with blobs.writer(max_bytes=10) as writer:
            await writer.write(b"0123456789")
            await writer.write(b"!")

    assert await stored_names(blobs) == []


async def test_an_unknown_blob_is_absent(blobs: BlobStore):
    unknown = hashlib.sha256(b"never stored").hexdigest()
    assert not await blobs.exists(unknown)
    assert await blobs.open(unknown) is None
    assert await blobs.remove(unknown, settled_s=0)  # gone already: done


async def test_remove_spares_a_blob_written_within_the_settling_time(blobs: BlobStore):
    digest = await put(blobs, b"just written")
    assert not await blobs.remove(digest, settled_s=30)
    assert await blobs.exists(digest)

    age_blobs(blobs, 60)
    assert await blobs.remove(digest, settled_s=30)
    assert not await blobs.exists(digest)


async def test_describe_names_where_the_blob_lives(blobs: BlobStore, blob_env: dict[str, str]):
    digest = await put(blobs, b"somewhere")
    where = blobs.describe(digest)
    if blob_env:
        assert where == f"{blob_env['FLUXHOOK_BLOB_URL']}/{digest[:2]}/{digest[2:4]}/{digest}"
    else:
        assert where.startswith("file:///") and where.endswith(f"/{digest[:2]}/{digest[2:4]}/{digest}")


async def test_a_presigned_url_serves_the_blob_from_s3_and_a_directory_has_none(
    blobs: BlobStore, blob_env: dict[str, str]
):
    digest = await put(blobs, b"shared by URL")
    url = await blobs.presigned_url(digest, expires_s=60)
    if not blob_env:
        assert url is None
        return
    assert url is not None and "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    async with httpx.AsyncClient() as client:
        fetched = await client.get(url)
    assert fetched.status_code == 200 and fetched.content == b"shared by URL"


async def test_a_large_image_streams_through_without_being_held_in_memory(blobs: BlobStore):
    size, chunk = 30 * MiB, os.urandom(64 * 1024)
    expected = hashlib.sha256()
    tracemalloc.start()
    try:
        async with blobs.writer(max_bytes=size) as writer:
            for _ in range(size // len(chunk)):
                await writer.write(chunk)
                expected.update(chunk)
            digest = await writer.commit()
        _, written_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        content = await blobs.open(digest)
        assert content is not None and content.size == size
        read = hashlib.sha256()
        async for piece in content.chunks:
            read.update(piece)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert digest == expected.hexdigest() == read.hexdigest()
    assert written_peak < 8 * MiB, f"writing held {written_peak} bytes"
    assert read_peak < 8 * MiB, f"reading held {read_peak} bytes"


async def test_partial_writes_left_by_a_crash_are_removed_at_start(
    make_settings: Callable[..., Settings], blobs: BlobStore
):
    async with blobs.writer(max_bytes=1000) as writer:
        await writer.write(b"half an image")
        await writer.commit()  # a temporary object or file existed, then none
    crashed = blobs.writer(max_bytes=1000)
    await crashed.__aenter__()
    await crashed.write(b"half an image")
    if not isinstance(blobs, LocalBlobStore):
        await crashed._file.close()  # type: ignore[attr-defined]  # the temporary object exists
        age_blobs(blobs, 7200)  # and the writer that made it is long dead
    else:
        crashed._file.close()  # type: ignore[attr-defined]  # the process died: its lock is gone
    assert [name for name in await stored_names(blobs) if name.startswith("tmp/")]

    assert await blobs.remove_partials() == 1
    assert [name for name in await stored_names(blobs) if name.startswith("tmp/")] == []


async def test_open_context_sweeps_partials_a_crash_left(make_settings: Callable[..., Settings]):
    settings = make_settings(FLUXHOOK_BLOB_URL="")
    leftover = settings.blob_dir / "tmp" / "0123456789abcdef.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half an image")

    async with open_context(settings) as ctx:
        assert not leftover.exists()
        assert await stored_names(ctx.blobs) == []


async def test_a_sweep_leaves_a_write_in_progress_alone(
    blobs: BlobStore, make_settings: Callable[..., Settings]
):
    settings = make_settings()
    other_process = open_blob_store(settings.blob_location, aws=settings.aws)
    async with blobs.writer(max_bytes=1000) as writer:
        await writer.write(b"first half ")
        # Another process starting up sweeps the shared store meanwhile.
        assert await other_process.remove_partials() == 0
        await writer.write(b"second half")
        digest = await writer.commit()

    assert await read_blob(blobs, digest) == b"first half second half"
    assert await stored_names(blobs) == [f"{digest[:2]}/{digest[2:4]}/{digest}"]


async def test_a_sweep_of_a_store_never_written_to_does_nothing(blobs: BlobStore):
    assert await blobs.remove_partials() == 0


async def test_two_writers_of_the_same_bytes_at_once_store_one_whole_blob(blobs: BlobStore):
    image = os.urandom(200_000)

    async def write_in_halves() -> str:
        async with blobs.writer(max_bytes=MiB) as writer:
            await writer.write(image[:100_000])
            await anyio.lowlevel.checkpoint()  # let the other writer interleave
            await writer.write(image[100_000:])
            return await writer.commit()

    digests: list[str] = []

    async def one() -> None:
        digests.append(await write_in_halves())

    async with anyio.create_task_group() as group:
        group.start_soon(one)
        group.start_soon(one)

    [digest] = set(digests)
    assert await read_blob(blobs, digest) == image
    assert await stored_names(blobs) == [f"{digest[:2]}/{digest[2:4]}/{digest}"]


async def test_an_unreachable_object_store_raises_blob_unavailable_naming_no_secret(s3_endpoint: str):
    env = s3_env(s3_endpoint, "no-such-bucket-here")
    blobs = open_blob_store(env["FLUXHOOK_BLOB_URL"], aws=env)
    with pytest.raises(BlobUnavailable) as raised:
        async with blobs.writer(max_bytes=MiB) as writer:
            await writer.write(b"an image")
            await writer.commit()
    assert "test-secret-key" not in str(raised.value)

    nobody = s3_env(f"http://127.0.0.1:{free_port()}", "blobs")  # nothing listens there
    unreachable = open_blob_store(nobody["FLUXHOOK_BLOB_URL"], aws=nobody)
    with pytest.raises(BlobUnavailable):
        await unreachable.exists(hashlib.sha256(b"x").hexdigest())


CRASH_MID_WRITE = """
import os, signal, anyio
from storage.blobs import open_blob_store

async def main():
    blobs = open_blob_store(os.environ["FLUXHOOK_BLOB_URL"], aws=os.environ)
    async with blobs.writer(max_bytes=64 << 20) as writer:
        for _ in range(12 * 16):  # 12 MiB: past the first parts of a multipart upload
            await writer.write(os.urandom(64 * 1024))
        os.kill(os.getpid(), signal.SIGKILL)

anyio.run(main)
"""


async def test_a_process_killed_mid_write_leaves_nothing_under_a_final_name(
    blobs: BlobStore, blob_env: dict[str, str], make_settings: Callable[..., Settings]
):
    settings = make_settings()
    env = {**blob_env, "FLUXHOOK_BLOB_URL": settings.blob_location}
    crashed = subprocess.run(  # noqa: ASYNC221 - the child must die on its own terms
        [sys.executable, "-c", CRASH_MID_WRITE], env={**os.environ, **env}, cwd=ROOT,
        capture_output=True, timeout=60,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]

    assert [name for name in await stored_names(blobs) if not name.startswith("tmp/")] == []
    age_blobs(blobs, 7200)  # long after the crash
    await blobs.remove_partials()
    assert await stored_names(blobs) == []
