"""The list cursor: an opaque token naming the last job a page showed (created_at, id)."""

from __future__ import annotations

import base64

from service.errors import MalformedRequest
from service.parsing import parse_count
from storage.records import JobRecord


def encode_cursor(job: JobRecord) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at}:{job.id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, job_id = base64.urlsafe_b64decode(padded).decode().split(":", 1)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad_cursor() from exc
    # int() alone would take "+1", "1_0", "٣" and numbers past SQLite's 64-bit range, which
    # fail as OverflowError when bound to the query (a 500).
    created_at = parse_count(created, max_digits=18)
    if created_at is None:
        raise _bad_cursor()
    return created_at, job_id


def _bad_cursor() -> MalformedRequest:
    return MalformedRequest(
        "cursor is not one this service issued",
        code="invalid_cursor",
        details=[{"field": "cursor", "rule": "format"}],
    )
