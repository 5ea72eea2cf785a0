"""The job document: what the API returns and (later) what notifications carry."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from storage.records import AttemptRecord, JobRecord, OutputRecord


def rfc3339(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def output_url(public_url: str, job_id: str, index: int) -> str:
    return f"{public_url}/v1/jobs/{job_id}/outputs/{index}"


def job_document(
    job: JobRecord, outputs: list[OutputRecord], public_url: str,
    attempts: list[AttemptRecord] | None = None,
) -> dict[str, Any]:
    """The public shape of a job. Never includes the webhook secret or provider URLs."""
    return {
        "id": job.id,
        "provider": job.provider,
        "model": job.model,
        "status": job.status.value,
        "input": job.input,
        "metadata": job.metadata,
        "provider_job_id": job.provider_job_id,
        "progress": job.progress,
        "outputs": [
            {
                "index": out.index,
                "url": output_url(public_url, job.id, out.index),
                "sha256": out.sha256,
                "content_type": out.content_type,
                "bytes": out.bytes,
            }
            for out in outputs
        ],
        # Set once DELETE /v1/jobs/{id} or image retention removed them: each url answers 410.
        "outputs_deleted_at": rfc3339(job.outputs_deleted_at),
        "error": (
            {"code": job.error_code, "message": job.error_message} if job.error_code else None
        ),
        "completion_source": job.completion_source,
        "polls": job.poll_count,  # answered status polls; 0 when the callback did its job
        "callbacks": job.callback_count,  # callbacks received, duplicates and hints included
        "webhook_url": job.webhook_url,
        "webhook_events": list(job.webhook_events),
        "attempts": [
            {
                "provider": a.provider,
                "outcome": a.outcome,
                "http_status": a.http_status,
                "message": a.message,
                "provider_job_id": a.provider_job_id,
                "at": rfc3339(a.at),
            }
            for a in attempts or []
        ],
        "created_at": rfc3339(job.created_at),
        "updated_at": rfc3339(job.updated_at),
        "completed_at": rfc3339(job.completed_at),
    }
