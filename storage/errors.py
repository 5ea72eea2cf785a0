"""What the storage layer raises: storage errors only, never an HTTP error.

    StorageError
    ├── StorageUnavailable     the database did not answer or a write failed (nothing recorded)
    │   └── BlobUnavailable    the blob store failed (disk, network, credentials)
    ├── BlobTooLarge           a blob grew past its writer's `max_bytes`
    ├── IdempotencyConflict    an idempotency key already names a job made from another request
    └── UnknownJob             a write named a job the store does not have

The caller maps them (service/errors.py `from_storage`, handlers/errors.py). A refusal raised by a
callable the caller passed in (a callback's `judge`, say) passes through untouched, after the
transaction it ran in has rolled back.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error the storage layer raises on purpose."""


class StorageUnavailable(StorageError):
    """The database failed; the caller may retry."""


class IdempotencyConflict(StorageError):
    """The idempotency key was already used, for a request with another hash."""

    def __init__(self, job_id: str) -> None:
        super().__init__("idempotency key already used with a different request")
        self.job_id = job_id


class UnknownJob(StorageError):
    """A write named a job the store does not have."""

    def __init__(self, job_id: str) -> None:
        super().__init__("no such job")
        self.job_id = job_id


class BlobUnavailable(StorageUnavailable):
    """The blob store failed (disk, network, credentials); the caller may retry."""


class BlobTooLarge(StorageError):
    """A blob grew past the writer's `max_bytes` (the caller turns it into its own error)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit
