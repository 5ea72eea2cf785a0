"""What the storage layer raises: storage errors only, never an HTTP error.

    StorageError
    ├── StorageUnavailable     the database did not answer or a write failed (nothing recorded)
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
