"""The blob store: content-addressed files, and partial downloads cleaned up at start."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from service.app import open_context
from service.settings import Settings
from storage.blobs import BlobStore

pytestmark = pytest.mark.anyio


async def test_partial_downloads_left_by_a_crash_are_removed_at_start(make_settings: Callable[..., Settings]):
    settings = make_settings()
    leftover = settings.blob_dir / "tmp" / "0123456789abcdef.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half an image")

    async with open_context(settings) as ctx:
        assert not leftover.exists()
        assert list(ctx.blobs.root.glob("tmp/*")) == []


async def test_a_sweep_leaves_a_download_in_progress_alone(tmp_path: Path):
    blobs = BlobStore(tmp_path / "blobs")
    async with blobs.writer(max_bytes=1000) as writer:
        writer.write(b"first half ")
        # Another process starting up sweeps the shared directory meanwhile.
        assert BlobStore(tmp_path / "blobs").remove_partials() == 0
        writer.write(b"second half")
        digest = await writer.commit()

    assert blobs.path_for(digest).read_bytes() == b"first half second half"
    assert digest == hashlib.sha256(b"first half second half").hexdigest()
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_a_sweep_of_a_store_never_written_to_does_nothing(tmp_path: Path):
    assert BlobStore(tmp_path / "blobs").remove_partials() == 0
