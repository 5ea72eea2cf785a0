"""Blob stores, one per backend (the contract is `service.blobs.BlobStore`).

`FLUXHOOK_BLOB_URL` picks one: unset or a path (or `file://` URL) is a local directory,
`s3://bucket/prefix` S3-compatible object storage configured by AWS's standard variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from storage.blobs.local import LocalBlobStore

if TYPE_CHECKING:
    from storage.blobs.s3 import S3BlobStore


def open_blob_store(url: str, *, aws: Mapping[str, str]) -> LocalBlobStore | S3BlobStore:
    """The blob store `url` names; ValueError when it names none."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError("FLUXHOOK_BLOB_URL: s3:// needs a bucket (s3://bucket/prefix)")
        from storage.blobs.s3 import S3BlobStore  # imported only where it is used

        return S3BlobStore(parts.netloc, parts.path, aws)
    if parts.scheme == "file":
        return LocalBlobStore(Path(parts.path))
    if parts.scheme == "" or len(parts.scheme) == 1:  # a path (or a Windows drive letter)
        return LocalBlobStore(Path(url))
    raise ValueError(f"FLUXHOOK_BLOB_URL: {parts.scheme}:// is not a blob store (use a path or s3://)")
