"""Rows as frozen dataclasses: what the store returns and the core reads."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from service.jobs import JobState, JobStatus


@dataclass(frozen=True)
class JobRecord:
    id: str
    provider: str
    model: str
    status: JobStatus
    input: dict[str, Any]
    metadata: dict[str, Any]
    provider_job_id: str | None
    polling_url: str | None
    webhook_secret: str | None
    output_urls: tuple[str, ...]
    error_code: str | None
    error_message: str | None
    completion_source: str | None
    progress: float | None
    idempotency_key: str | None
    request_hash: str | None
    created_at: int
    updated_at: int
    submitted_at: int | None
    ready_at: int | None
    completed_at: int | None
    deadline_at: int
    poll_count: int
    callback_count: int
    candidates: tuple[str, ...] = ()

    def __repr__(self) -> str:  # the webhook secret never reaches a log line
        return f"JobRecord(id={self.id!r}, provider={self.provider!r}, status={self.status!r})"

    @property
    def state(self) -> JobState:
        return JobState(
            status=self.status,
            provider_job_id=self.provider_job_id,
            polling_url=self.polling_url,
            output_urls=self.output_urls,
            error_code=self.error_code,
            error_message=self.error_message,
            completion_source=self.completion_source,
            progress=self.progress,
        )

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        return cls(
            id=row["id"],
            provider=row["provider"],
            model=row["model"],
            status=JobStatus(row["status"]),
            input=json.loads(row["input"]),
            metadata=json.loads(row["metadata"]),
            provider_job_id=row["provider_job_id"],
            polling_url=row["polling_url"],
            webhook_secret=row["webhook_secret"],
            output_urls=tuple(json.loads(row["output_urls"])),
            error_code=row["error_code"],
            error_message=row["error_message"],
            completion_source=row["completion_source"],
            progress=row["progress"],
            idempotency_key=row["idempotency_key"],
            request_hash=row["request_hash"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            submitted_at=row["submitted_at"],
            ready_at=row["ready_at"],
            completed_at=row["completed_at"],
            deadline_at=row["deadline_at"],
            poll_count=row["poll_count"],
            callback_count=row["callback_count"],
            candidates=tuple(json.loads(row["candidates"])),
        )


@dataclass(frozen=True)
class OutputRecord:
    job_id: str
    index: int
    sha256: str
    content_type: str
    bytes: int
    source_url: str | None
    stored_at: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> OutputRecord:
        return cls(row["job_id"], row["idx"], row["sha256"], row["content_type"], row["bytes"],
                   row["source_url"], row["stored_at"])


@dataclass(frozen=True)
class TaskRecord:
    """One piece of due work: `kind` is submit, poll or fetch."""

    id: int
    job_id: str
    kind: str
    due_at: int
    attempts: int
    last_error: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> TaskRecord:
        return cls(row["id"], row["job_id"], row["kind"], row["due_at"], row["attempts"],
                   row["last_error"])


@dataclass(frozen=True)
class NewJob:
    id: str
    provider: str
    model: str
    input: dict[str, Any]
    metadata: dict[str, Any]
    webhook_secret: str | None
    idempotency_key: str | None
    request_hash: str | None
    deadline_at: int
    candidates: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttemptRecord:
    """One submit to one provider: accepted, rejected, unavailable or failed over."""

    provider: str
    outcome: str
    http_status: int | None
    message: str | None
    provider_job_id: str | None
    at: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> AttemptRecord:
        return cls(row["provider"], row["outcome"], row["http_status"], row["message"],
                   row["provider_job_id"], row["at"])


@dataclass(frozen=True)
class UploadRecord:
    id: str
    sha256: str
    content_type: str
    bytes: int
    created_at: int
    expires_at: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> UploadRecord:
        return cls(row["id"], row["sha256"], row["content_type"], row["bytes"], row["created_at"],
                   row["expires_at"])
