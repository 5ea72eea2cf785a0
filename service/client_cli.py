"""`fluxhook submit | jobs | job | watch`: the command-line client of a running fluxhook.

The HTTP calls are service/client.py's, the text service/client_render.py's, the progress
display service/client_display.py's; this module wires them to the command line. Results go to
stdout, progress and errors to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

from service.client import TERMINAL_EVENTS, Client, Event, Saved, display_url
from service.client_display import FINAL, Display, display
from service.client_render import (
    error_message,
    exit_status,
    job_lines,
    job_state,
    jobs_table,
    output_name,
    parse_assignment,
    timeline,
    watch_line,
)
from service.errors import ClientError


def run_client(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    transport: httpx.BaseTransport | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run one client command; its exit status (service/client_args.py EXIT_CODES)."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        url = server_url(args.url, environ)
    except ValueError as exc:
        print(f"fluxhook: {exc}", file=err)
        return 2
    api_key = args.api_key or environ.get("FLUXHOOK_API_KEY", "").strip() or None
    client = Client(url, api_key=api_key, timeout=args.http_timeout, transport=transport,
                    user_agent=f"fluxhook-cli/{_version()}", clock=clock)
    command = {"submit": _submit, "jobs": _jobs, "job": _job, "watch": _watch}[args.command]
    try:
        with client:
            return command(client, args, Streams(out, err, clock))
    except ClientError as exc:
        print(f"fluxhook: {error_message(exc)}", file=err)
        return exit_status(exc)
    except KeyboardInterrupt:
        print("fluxhook: interrupted", file=err)
        return 130
    except BrokenPipeError:
        # `fluxhook watch | head -3`: the reader left. Python's own advice: point stdout at
        # /dev/null so the interpreter's final flush does not fail again with a traceback.
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def server_url(flag: str | None, environ: Mapping[str, str]) -> str:
    """--url, else FLUXHOOK_URL, else FLUXHOOK_PUBLIC_URL, else fluxhook serve's own address."""
    port = environ.get("FLUXHOOK_PORT", "").strip()
    for name, value in (("--url", flag), ("FLUXHOOK_URL", environ.get("FLUXHOOK_URL")),
                        ("FLUXHOOK_PUBLIC_URL", environ.get("FLUXHOOK_PUBLIC_URL"))):
        if value and value.strip():
            url = value.strip().rstrip("/")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{name} must be an http(s) URL, got {display_url(url)!r}")
            return url
    return f"http://127.0.0.1:{port if port.isascii() and port.isdigit() else 8000}"


class Streams:
    def __init__(self, out: IO[str], err: IO[str], clock: Callable[[], float]) -> None:
        self.out = out
        self.err = err
        self.clock = clock

    def print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.err, flush=True)


# --- submit ------------------------------------------------------------------------------------


def submit_body(args: argparse.Namespace) -> dict[str, Any]:
    """The `POST /v1/jobs` body the flags describe; ValueError naming a malformed flag."""
    payload: dict[str, Any] = {}
    if args.prompt is not None:
        payload["prompt"] = args.prompt
    for name in ("width", "height", "seed"):
        if getattr(args, name) is not None:
            payload[name] = getattr(args, name)
    payload.update(parse_assignment(text, flag="--param") for text in args.param)
    body: dict[str, Any] = {"provider": args.provider, "model": args.model, "input": payload}
    if args.metadata:
        body["metadata"] = dict(parse_assignment(text, flag="--metadata") for text in args.metadata)
    return body


def _submit(client: Client, args: argparse.Namespace, io: Streams) -> int:
    try:
        body = submit_body(args)
    except ValueError as exc:
        io.note(f"fluxhook: {exc}")
        return 2
    job = client.submit(body, idempotency_key=args.idempotency_key)
    job_id = str(job["id"])
    if args.no_wait:
        io.print(json.dumps(job, indent=2) if args.json else job_id)
        return 0
    saved: list[Saved] = []
    try:
        with display(args.progress, io.err) as show:
            show.job(job)
            if job["status"] not in FINAL:
                until = io.clock() + args.timeout if args.timeout else None
                for event in client.events(job_id=job_id, after=0, until=until,
                                           on_reconnect=show.reconnecting):
                    show.event(event)
                    if event.type in TERMINAL_EVENTS:
                        break
                job = client.job(job_id)
            if job["status"] == "succeeded":
                saved = _save_outputs(client, job, Path(args.output_dir), show)
    except KeyboardInterrupt:
        io.note(f"fluxhook: interrupted; {job_id} carries on: follow it with `fluxhook watch --job "
                f"{job_id}`, see it with `fluxhook job {job_id}`")
        return 130
    if args.json:
        io.print(json.dumps({"job": job, "files": [_saved_document(s) for s in saved]}, indent=2))
    else:
        for one in saved:
            io.print(str(one.path))
    if job["status"] not in FINAL:
        io.note(f"fluxhook: {job_id} is still {job_state(job)} after --timeout {args.timeout:g} s; it "
                f"carries on: follow it with `fluxhook watch --job {job_id}`")
        return 1
    if job["status"] != "succeeded":
        io.note(f"fluxhook: {job_id} {job_state(job)}")
        return 1
    return 0


def _save_outputs(client: Client, job: dict[str, Any], directory: Path, show: Display) -> list[Saved]:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClientError(f"cannot create --output-dir {directory}: {exc.strerror or exc}") from None
    saved = []
    for output in job.get("outputs") or []:
        name = output_name(str(job["id"]), output)
        one = client.download(str(job["id"]), output, directory / name,
                              on_bytes=show.downloading(name, int(output.get("bytes") or 0)))
        show.saved(str(job["id"]), one)
        saved.append(one)
    return saved


def _saved_document(saved: Saved) -> dict[str, Any]:
    return {"index": saved.index, "path": str(saved.path), "bytes": saved.bytes, "sha256": saved.sha256}


# --- jobs, job, watch --------------------------------------------------------------------------


def _jobs(client: Client, args: argparse.Namespace, io: Streams) -> int:
    page = client.jobs(status=args.status, limit=args.limit, cursor=args.cursor)
    jobs = [job for job in page.get("data") or [] if isinstance(job, dict)]
    if args.json:
        io.print(json.dumps(page, indent=2))
        return 0
    if not jobs:
        io.note("no jobs" + (f" with status {args.status}" if args.status else ""))
        return 0
    for line in jobs_table(jobs):
        io.print(line)
    if page.get("next_cursor"):
        status = f" --status {args.status}" if args.status else ""
        io.note(f"more: fluxhook jobs{status} --limit {args.limit} --cursor {page['next_cursor']}")
    return 0


def _job(client: Client, args: argparse.Namespace, io: Streams) -> int:
    job = client.job(args.job_id)
    events: list[Event] = []
    for event in client.events(job_id=str(job["id"]), after=0, idle_s=args.events_wait):
        events.append(event)
        if job["status"] in FINAL and event.type in TERMINAL_EVENTS:
            break  # a final job's last event: nothing more will come
    deliveries = client.deliveries(str(job["id"]))
    if args.json:
        io.print(json.dumps({"job": job, "events": [{"seq": e.seq, **e.body} for e in events],
                             "deliveries": deliveries}, indent=2))
    else:
        for line in job_lines(job, timeline(job, events, deliveries)):
            io.print(line)
    return 0


def _watch(client: Client, args: argparse.Namespace, io: Streams) -> int:
    types = tuple(t.strip() for spec in args.type for t in spec.split(",") if t.strip())
    until = io.clock() + args.timeout if args.timeout else None
    seen = 0

    def resuming(last: int | None) -> None:
        io.note(f"event stream dropped; resuming after #{last}" if last is not None
                else "event stream dropped; reconnecting")

    # One job's events from its start: a job that already ended would otherwise show nothing.
    after = 0 if args.after is None and args.job else args.after
    for event in client.events(job_id=args.job, types=types, after=after, until=until,
                               on_reconnect=resuming):
        io.print(json.dumps({"seq": event.seq, **event.body}) if args.json else watch_line(event))
        seen += 1
        if args.count is not None and seen >= args.count:
            break
        if args.job and event.type in TERMINAL_EVENTS:
            break
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fluxhook")
    except PackageNotFoundError:
        return "unknown"
