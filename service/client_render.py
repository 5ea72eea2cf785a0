"""What the command-line client prints: pure functions from API documents to lines of text."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from service.client import Event
from service.errors import ClientError, OutputMismatch, ServerRefused, ServerUnreachable

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
PROMPT_CHARS = 40


def error_message(exc: ClientError) -> str:
    """One or more lines saying what went wrong, with the server's own words when it spoke."""
    if isinstance(exc, ServerUnreachable):
        return f"{exc.message} (is it running? set --url or FLUXHOOK_URL)"
    if isinstance(exc, ServerRefused):
        lines = [f"the server refused ({exc.status} {exc.code}): {exc.message}"]
        for detail in exc.details:
            if not isinstance(detail, dict):
                continue
            field, why = detail.get("field"), detail.get("message") or detail.get("rule")
            allowed = detail.get("allowed")
            extra = f"; allowed: {', '.join(map(str, allowed))}" if isinstance(allowed, list) else ""
            lines.append(f"  {field}: {why}{extra}")
        if exc.status == 401:
            lines.append("  (set FLUXHOOK_API_KEY or --api-key to the server's API key)")
        return "\n".join(lines)
    return exc.message


def exit_status(exc: ClientError) -> int:
    """The documented exit status (service/client_args.py EXIT_CODES) for a failure."""
    if isinstance(exc, OutputMismatch):
        return 4
    if isinstance(exc, ServerUnreachable) or (isinstance(exc, ServerRefused) and exc.status >= 500):
        return 3
    return 2


def parse_assignment(text: str, *, flag: str) -> tuple[str, Any]:
    """`KEY=VALUE` as (key, value): VALUE read as JSON when it is JSON, else kept as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{flag} takes KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def output_name(job_id: str, output: dict[str, Any]) -> str:
    ext = EXTENSIONS.get(str(output.get("content_type")), "bin")
    return f"{job_id}_{output['index']}.{ext}"


def job_state(job: dict[str, Any]) -> str:
    """`succeeded by callback, 1 image`, `running 40%`, `failed: moderated: ...`: a job's state."""
    status = str(job.get("status"))
    text = status
    progress = job.get("progress")
    if status in ("submitted", "running") and isinstance(progress, int | float) and progress > 0:
        text += f" {round(progress * 100)}%"
    if status == "succeeded":
        count = len(job.get("outputs") or [])
        text += f" by {job.get('completion_source') or 'unknown'}, {count} image{'s' * (count != 1)}"
    error = job.get("error")
    if isinstance(error, dict):
        text += f": {error.get('code')}: {error.get('message')}"
    return text


def submitted_line(job: dict[str, Any]) -> str:
    line = f"{job.get('id')} {job_state(job)}: {job.get('provider')} {job.get('model')}"
    task = job.get("provider_job_id")
    return f"{line} (provider task {task})" if task else line


def event_line(event: Event) -> str:
    """A job's change as the submit command shows it: `job_... running 40%`."""
    job = event.job
    if job is None:
        return f"{event.type} {_subject(event)}"
    if event.type == "job.submitted":
        return submitted_line(job)
    return f"{job.get('id')} {job_state(job)}"


def watch_line(event: Event) -> str:
    """`#12 2026-11-22T10:00:07.412Z job.succeeded job_... bfl flux-pro-1.1 succeeded by ...`."""
    head = f"#{event.seq if event.seq is not None else '?'} {event.body.get('timestamp', '-')} {event.type}"
    job = event.job
    if job is None:
        return f"{head} {_subject(event)}"
    return f"{head} {job.get('id')} {job.get('provider')} {job.get('model')} {job_state(job)}"


def _subject(event: Event) -> str:
    data = event.body.get("data")
    if isinstance(data, dict):
        reason = data.get("disabled_reason")
        return f"{data.get('id')} {data.get('url', '')}{f' ({reason})' if reason else ''}".strip()
    return ""


def jobs_table(jobs: list[dict[str, Any]]) -> list[str]:
    """One line per job under a header, columns aligned."""
    rows: list[tuple[str, ...]] = [("ID", "STATUS", "PROVIDER", "MODEL", "IMAGES", "CREATED", "PROMPT")]
    for job in jobs:
        prompt = " ".join(str((job.get("input") or {}).get("prompt", "")).split())  # one line
        if len(prompt) > PROMPT_CHARS:
            prompt = prompt[: PROMPT_CHARS - 1] + "…"
        rows.append((str(job.get("id")), str(job.get("status")), str(job.get("provider")),
                     str(job.get("model")), str(len(job.get("outputs") or [])),
                     str(job.get("created_at")), prompt))
    return _columns(rows)


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]


@dataclass(frozen=True, order=True)
class Moment:
    """One thing that happened to a job; `at` is RFC 3339 UTC with milliseconds, so sortable."""

    at: str
    order: int  # ties keep the order things are listed in
    text: str


def timeline(
    job: dict[str, Any], events: Iterable[Event], deliveries: Iterable[dict[str, Any]]
) -> list[Moment]:
    """Everything the API tells about a job, in time order: its creation, each submit attempt,
    each event, each delivery attempt (and a delivery still waiting for its first)."""
    found: list[tuple[str, str]] = [(str(job.get("created_at")), "created: queued")]
    for attempt in job.get("attempts") or []:
        status = f" (HTTP {attempt['http_status']})" if attempt.get("http_status") else ""
        task = f", task {attempt['provider_job_id']}" if attempt.get("provider_job_id") else ""
        message = f": {attempt['message']}" if attempt.get("message") else ""
        outcome = f"{attempt.get('outcome')}{status}{task}{message}"
        found.append((str(attempt.get("at")), f"submit to {attempt.get('provider')}: {outcome}"))
    for event in events:
        state = job_state(event.job) if event.job is not None else _subject(event)
        found.append((str(event.body.get("timestamp")), f"event #{event.seq} {event.type}: {state}"))
    for delivery in deliveries:
        name = f"{delivery.get('event_type')} to {delivery.get('url')}"
        attempts = delivery.get("attempts") or []
        if not attempts:
            found.append((str(delivery.get("created_at")), f"delivery of {name}: {delivery.get('status')}"))
        for attempt in attempts:
            result = (f"HTTP {attempt['status_code']}" if attempt.get("status_code") is not None
                      else str(attempt.get("error") or "no answer"))
            took = f" in {attempt['duration_ms']} ms" if attempt.get("duration_ms") is not None else ""
            retry = f", next try {attempt['next_attempt_at']}" if attempt.get("next_attempt_at") else ""
            found.append((str(attempt.get("at")),
                          f"delivery of {name}: attempt {attempt.get('attempt')}: {result}{took}{retry}"))
    return sorted(Moment(at, n, text) for n, (at, text) in enumerate(found))


def job_lines(job: dict[str, Any], moments: list[Moment]) -> list[str]:
    """`fluxhook job ID`: the job's facts, then its timeline."""
    task = f" (provider task {job['provider_job_id']})" if job.get("provider_job_id") else ""
    lines = [
        f"{job.get('id')}  {job_state(job)}",
        f"  provider   {job.get('provider')}{task}",
        f"  model      {job.get('model')}",
        f"  input      {json.dumps(job.get('input'), ensure_ascii=False)}",
    ]
    if job.get("metadata"):
        lines.append(f"  metadata   {json.dumps(job.get('metadata'), ensure_ascii=False)}")
    lines.append(f"  created    {job.get('created_at')}")
    if job.get("completed_at"):
        lines.append(f"  completed  {job.get('completed_at')} by {job.get('completion_source')} "
                     f"({job.get('callbacks', 0)} callbacks, {job.get('polls', 0)} polls)")
    if job.get("webhook_url"):
        lines.append(f"  webhook    {job.get('webhook_url')}")
    for output in job.get("outputs") or []:
        lines.append(f"  output {output.get('index')}   {output.get('content_type')} "
                     f"{output.get('bytes')} bytes sha256 {output.get('sha256')}  {output.get('url')}")
    if job.get("outputs_deleted_at"):
        lines.append(f"  removed    {job.get('outputs_deleted_at')} (the images are gone)")
    lines.append("timeline")
    lines += [f"  {moment.at}  {moment.text}" for moment in moments]
    return lines
