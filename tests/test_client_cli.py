"""`fluxhook submit | jobs | job | watch`: the command-line client of a running fluxhook.

The end-to-end tests run the installed `fluxhook` as a real process against a real
`fluxhook serve` (the embedded simulator as its provider); the others check the pieces: the
event-stream decoder, resuming, downloads, error messages, flags and help.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.cli import HelpFormatter, main, parser
from service.client import Client, Event, SseDecoder, SseMessage
from service.client_cli import run_client, server_url, submit_body
from service.client_display import CLEAR_LINE, SPINNER, TerminalDisplay, status_line
from service.client_render import jobs_table, timeline
from service.errors import ClientError, OutputMismatch, ServerRefused, ServerUnreachable
from tests.e2e import free_port, read_log
from tests.test_cold_start import imported_by, loaded

FLUXHOOK = str(Path(sys.executable).parent / "fluxhook")  # the installed console script
API_KEY = "cli-e2e-marker-key-0123456789"
CLIENT = ("service.client", "service.client_cli", "service.client_render", "service.client_display")


def fluxhook_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`fluxhook <args>` as a real process, its output piped (so not a terminal), decoded
    without turning a carriage return into a newline."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("FLUXHOOK_")}
    done = subprocess.run([FLUXHOOK, *args], capture_output=True, timeout=timeout,
                          env={**inherited, **(env or {})}, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


# --- against a real `fluxhook serve` -------------------------------------------------------------


class Server:
    def __init__(self, base: str, log: Path) -> None:
        self.base = base
        self.log = log
        self.env = {"FLUXHOOK_URL": base, "FLUXHOOK_API_KEY": API_KEY}
        self.http = httpx.Client(base_url=base, timeout=30,
                                 headers={"Authorization": f"Bearer {API_KEY}"})

    def finished_job(self, **body: Any) -> dict[str, Any]:
        created = self.http.post("/v1/jobs", json={"model": "flux-pro-1.1", "input": {"prompt": "a fox"},
                                                   **body})
        assert created.status_code == 202, created.text
        done = self.http.get(f"/v1/jobs/{created.json()['id']}", params={"wait": 30}).json()
        assert done["status"] == "succeeded", done
        return dict(done)


@contextmanager
def knobs(server: Server, **values: Any) -> Iterator[None]:
    """The mounted simulator's knobs set to `values` for a while (PATCH /simulator/_sim/config)."""
    before = server.http.get("/simulator/_sim/config").json()
    assert server.http.patch("/simulator/_sim/config", json=values).status_code == 200
    try:
        yield
    finally:
        server.http.patch("/simulator/_sim/config", json={k: before[k] for k in values})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `fluxhook serve` with the simulator mounted, behind an API key, for this module."""
    root = tmp_path_factory.mktemp("cli")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = root / "serve.log"
    env = {
        "FLUXHOOK_DATA_DIR": str(root / "data"),
        "FLUXHOOK_SIMULATOR": "on",
        "FLUXHOOK_SIM_SEED": "11",
        "FLUXHOOK_SIM_LATENCY_S": "0.3,0.6",
        "FLUXHOOK_API_KEY": API_KEY,
        "FLUXHOOK_SECRET_KEY": "cli-e2e-secret-key",
        "FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS": "loopback",
        "FLUXHOOK_WEBHOOK_RETRY_SCHEDULE": "0,600",
        "FLUXHOOK_LOG_LEVEL": "warning",
    }
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("FLUXHOOK_")}
    with open(log, "ab") as handle:
        process = subprocess.Popen([FLUXHOOK, "serve", "--port", str(port)], env={**inherited, **env},
                                   stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, read_log(log)
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, read_log(log)
            time.sleep(0.1)
        running = Server(base, log)
        yield running
        running.http.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.e2e
def test_submit_as_a_real_process_shows_progress_and_writes_the_image_with_the_jobs_sha256(server, tmp_path):
    out = tmp_path / "out"
    done = fluxhook_cli("submit", "--model", "flux-pro-1.1", "a lighthouse at dusk", "--provider", "auto",
                        "-o", str(out), "--param", "output_format=png", "--seed", "7",
                        "--idempotency-key", "cli-e2e-1", env=server.env)
    assert done.returncode == 0, done.stderr + read_log(server.log)
    [path] = done.stdout.split()
    written = Path(path)
    job_id = written.name.rsplit("_", 1)[0]
    job = server.http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert job["input"] == {"prompt": "a lighthouse at dusk", "seed": 7, "output_format": "png"}
    assert written.parent == out and written.suffix == ".png"
    assert hashlib.sha256(written.read_bytes()).hexdigest() == job["outputs"][0]["sha256"]
    # Piped, so plain progress lines on stderr: the job, each status it went through, the file.
    progress = done.stderr.splitlines()
    assert progress[0].startswith(f"{job_id} queued: bfl flux-pro-1.1")
    assert any(line.startswith(f"{job_id} submitted") for line in progress)
    assert any(line.startswith(f"{job_id} succeeded by ") for line in progress)
    assert progress[-1].startswith(f"{job_id} saved {path}")
    assert API_KEY not in done.stdout + done.stderr

    again = fluxhook_cli("submit", "--model", "flux-pro-1.1", "a lighthouse at dusk", "--provider", "auto",
                         "-o", str(out), "--param", "output_format=png", "--seed", "7",
                         "--idempotency-key", "cli-e2e-1", env=server.env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == [path]  # the same job, not a second one
    assert again.stderr.splitlines()[0].startswith(f"{job_id} succeeded")


@pytest.mark.e2e
def test_submit_json_reports_the_job_and_the_checked_files(server, tmp_path):
    done = fluxhook_cli("submit", "--model", "flux-dev", "a tiny city", "--json", "--progress", "none",
                        "--metadata", "order=1234", "-o", str(tmp_path), env=server.env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    report = json.loads(done.stdout)
    assert report["job"]["metadata"] == {"order": 1234}
    [saved] = report["files"]
    assert saved["sha256"] == report["job"]["outputs"][0]["sha256"]
    assert hashlib.sha256(Path(saved["path"]).read_bytes()).hexdigest() == saved["sha256"]


@pytest.mark.e2e
def test_submit_on_a_terminal_draws_a_live_status_line_then_restores_the_cursor(server, tmp_path):
    done = fluxhook_cli("submit", "--model", "flux-pro-1.1", "a fox", "--progress", "bar",
                        "-o", str(tmp_path), env=server.env)
    assert done.returncode == 0, done.stderr
    [path] = done.stdout.split()
    job_id = Path(path).name.rsplit("_", 1)[0]
    assert done.stderr.startswith("\x1b[?25l") and done.stderr.endswith(CLEAR_LINE + "\x1b[?25h")
    drawn = [part for part in done.stderr.split(CLEAR_LINE) if part]
    assert f"{job_id} succeeded by callback, 1 image\n" in drawn
    # Each status line: a spinner frame, what is under way, its bar.
    assert any(part[0] in SPINNER and part[1:].startswith(f" {job_id} queued [") for part in drawn)
    assert any(part[1:].startswith(f" {Path(path).name} [") and "] 100% " in part for part in drawn[-3:])


@pytest.mark.e2e
def test_a_failed_job_exits_1_with_its_error(server, tmp_path):
    with knobs(server, failure_rate=1.0):
        done = fluxhook_cli("submit", "--model", "flux-pro-1.1", "a fox", "-o", str(tmp_path), env=server.env)
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]
    assert last.startswith("fluxhook: job_") and " failed: provider_error: " in last
    assert done.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_submit_stops_waiting_after_its_timeout_and_says_how_to_follow_the_job(server):
    with knobs(server, latency_s=[20, 20]):
        done = fluxhook_cli("submit", "--model", "flux-pro-1.1", "a fox", "--timeout", "1", env=server.env)
    assert done.returncode == 1
    job_id = done.stderr.split()[0]
    assert done.stderr.splitlines()[-1] == (
        f"fluxhook: {job_id} is still submitted after --timeout 1 s; it carries on: "
        f"follow it with `fluxhook watch --job {job_id}`")


@pytest.mark.e2e
def test_jobs_lists_jobs_filtered_by_status(server):
    job = server.finished_job()
    listed = fluxhook_cli("jobs", "--status", "succeeded", "--limit", "100", env=server.env)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "PROVIDER", "MODEL", "IMAGES", "CREATED", "PROMPT"]
    [row] = [r for r in rows if r.startswith(job["id"])]
    assert row.split()[:5] == [job["id"], "succeeded", "bfl", "flux-pro-1.1", "1"]
    assert all(r.split()[1] == "succeeded" for r in rows)

    none = fluxhook_cli("jobs", "--status", "cancelled", env=server.env)
    assert (none.returncode, none.stdout, none.stderr) == (0, "", "no jobs with status cancelled\n")


@pytest.mark.e2e
def test_job_shows_the_document_and_a_timeline_of_attempts_events_and_deliveries(server):
    dead_end = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: the delivery fails
    job = server.finished_job(webhook_url=dead_end)
    deadline = time.monotonic() + 30
    while not any(d["attempts"] for d in server.http.get(f"/v1/jobs/{job['id']}/deliveries").json()["data"]):
        assert time.monotonic() < deadline, read_log(server.log)
        time.sleep(0.1)
    shown = fluxhook_cli("job", job["id"], env=server.env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"{job['id']}  succeeded by ")
    assert any(job["outputs"][0]["sha256"] in line for line in lines)
    timeline_lines = lines[lines.index("timeline") + 1:]
    texts = [line.split(None, 1)[1] for line in timeline_lines]
    assert texts[0] == "created: queued"
    assert texts[1].startswith(f"submit to bfl: accepted (HTTP 200), task {job['provider_job_id']}")
    assert any(t.startswith("event #") and "job.submitted" in t for t in texts)
    assert any(t.startswith("event #") and "job.succeeded" in t for t in texts)
    assert any(t.startswith(f"delivery of job.succeeded to {dead_end}: attempt 1: ") for t in texts)
    times = [line.split()[0] for line in timeline_lines]
    assert times == sorted(times)


@pytest.mark.e2e
def test_watch_prints_one_line_per_event_and_stops_after_count_or_at_the_jobs_end(server):
    job = server.finished_job()
    two = fluxhook_cli("watch", "--after", "0", "--count", "2", env=server.env)
    assert two.returncode == 0, two.stderr
    assert [line.split()[0] for line in two.stdout.splitlines()] == ["#1", "#2"]

    one_job = fluxhook_cli("watch", "--job", job["id"], env=server.env)  # from its start, as it ended
    assert one_job.returncode == 0, one_job.stderr
    lines = one_job.stdout.splitlines()
    assert [line.split()[2] for line in lines][-1] == "job.succeeded"
    assert all(line.split()[3] == job["id"] for line in lines)

    quiet = fluxhook_cli("watch", "--timeout", "1", "--type", "job.cancelled", env=server.env)
    assert (quiet.returncode, quiet.stdout) == (0, "")


@pytest.mark.e2e
def test_a_refused_submit_prints_the_servers_message_naming_the_field(server, tmp_path):
    unknown = fluxhook_cli("submit", "--model", "flux-nope", "a fox", "-o", str(tmp_path), env=server.env)
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("fluxhook: the server refused (422 validation_failed): "
                                     "no configured provider serves model 'flux-nope'")
    assert "\n  model: enum; allowed: " in unknown.stderr

    bad_width = fluxhook_cli("submit", "--model", "flux-pro-1.1", "a fox", "--width", "500", env=server.env)
    assert bad_width.returncode == 2
    assert "  input.width: must be a multiple of 32" in bad_width.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_a_missing_api_key_is_reported_with_the_servers_message(server):
    anonymous = fluxhook_cli("jobs", env={"FLUXHOOK_URL": server.base})
    assert anonymous.returncode == 2
    assert "the server refused (401 unauthorized)" in anonymous.stderr
    assert "set FLUXHOOK_API_KEY or --api-key" in anonymous.stderr


def test_an_unreachable_server_exits_3_with_a_clear_message():
    url = f"http://127.0.0.1:{free_port()}"
    done = fluxhook_cli("submit", "--model", "flux-pro-1.1", "a fox", "--url", url,
                        env={"FLUXHOOK_API_KEY": API_KEY})
    assert done.returncode == 3
    assert done.stderr.startswith(f"fluxhook: cannot reach fluxhook at {url}: ")
    assert "set --url or FLUXHOOK_URL" in done.stderr
    assert API_KEY not in done.stderr


def test_serve_and_tick_do_not_load_the_client(tmp_path):
    building = imported_by(["-c", "import service.app, service.cli; service.cli.parser()"])
    assert "service.client_args" in building
    assert loaded(building, CLIENT) == []
    ticking = imported_by(["-m", "service.cli", "tick"], {
        "FLUXHOOK_DATA_DIR": str(tmp_path / "data"), "FLUXHOOK_PUBLIC_URL": "https://hooks.example.com",
        "FLUXHOOK_SIMULATOR": "off", "FLUXHOOK_SECRET_KEY": "cold-start-secret-key",
        "BFL_API_KEY": "test-bfl-key", "FLUXHOOK_LOG_LEVEL": "warning"})
    assert "service.tick" in ticking
    assert loaded(ticking, CLIENT) == []


# --- help and version ------------------------------------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    [commands] = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_help_explains_every_flag_with_its_default(command, capsys):
    sub = subcommands()[command]
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    formatter = HelpFormatter(prog="fluxhook")
    for action in sub._actions:
        if action.default == argparse.SUPPRESS:
            continue  # --help, --version: nothing to default
        text = formatter._get_help_string(action)
        assert action.help, f"{command} {action.option_strings or action.dest} is not explained"
        assert "default" in text or "(required)" in text or not action.option_strings, (command, action.dest)
        for flag in action.option_strings:
            assert flag in shown, (command, flag)


def test_help_never_shows_the_api_key(monkeypatch, capsys):
    monkeypatch.setenv("FLUXHOOK_API_KEY", API_KEY)
    for command in ("submit", "jobs", "job", "watch"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert API_KEY not in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--version"], ["submit", "--version"], ["serve", "--version"]])
def test_version_prints_the_installed_version(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"fluxhook {version('fluxhook')}\n"


# --- the pieces -------------------------------------------------------------------------------


def test_the_event_decoder_reads_ids_types_and_multiline_data_and_skips_comments():
    decoder = SseDecoder()
    lines = ["retry: 1000", "", ": keep-alive", "", "id: 7", "event: job.running", "data: {\"a\":",
             "data: 1}", "", "data:x", ""]
    messages = [m for m in map(decoder.feed, lines) if m is not None]
    assert messages == [SseMessage("7", "job.running", "{\"a\":\n1}"), SseMessage(None, "message", "x")]
    assert decoder.retry_ms == 1000


def event_bytes(seq: int, job_id: str = "job_1", status: str = "running") -> bytes:
    data = json.dumps({"id": f"evt_{seq}", "type": f"job.{status}", "data": {"id": job_id, "status": status},
                       "timestamp": f"2026-11-22T10:00:0{seq}.000Z"})
    return f"id: {seq}\nevent: job.{status}\ndata: {data}\n\n".encode()


class Dropped(httpx.SyncByteStream):
    """A stream that sends `chunks`, then the connection breaks."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def test_the_event_stream_resumes_after_a_dropped_connection_from_the_last_event_it_saw():
    asked: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("last-event-id"))
        if len(asked) == 1:
            return httpx.Response(200, stream=Dropped(b"retry: 5\n\n", event_bytes(4), event_bytes(5)))
        return httpx.Response(200, content=event_bytes(6, status="succeeded"))

    slept: list[float] = []
    resumed: list[int | None] = []
    client = Client("http://fluxhook.test", transport=httpx.MockTransport(answer), sleep=slept.append)
    events = client.events(job_id="job_1", after=0, on_reconnect=resumed.append)
    seen = []
    for event in events:
        seen.append(event.seq)
        if event.type == "job.succeeded":
            break
    assert seen == [4, 5, 6]
    assert asked == ["0", "5"]
    assert resumed == [5]
    assert slept == [0.005]  # the server's own `retry:`


def test_a_first_connection_refused_is_not_retried():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    client = Client("http://user:pw@fluxhook.test", transport=httpx.MockTransport(refuse))
    with pytest.raises(ServerUnreachable) as raised:
        next(client.events())
    assert raised.value.message == ("cannot reach fluxhook at http://fluxhook.test: "
                                    "[Errno 111] Connection refused")


def test_an_image_whose_bytes_do_not_match_the_jobs_sha256_is_not_kept(tmp_path):
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"not the image"))
    client = Client("http://fluxhook.test", transport=transport)
    output = {"index": 0, "sha256": hashlib.sha256(b"the image").hexdigest(), "bytes": 9}
    with pytest.raises(OutputMismatch) as raised:
        client.download("job_1", output, tmp_path / "job_1_0.png")
    assert raised.value.actual == hashlib.sha256(b"not the image").hexdigest()
    assert list(tmp_path.iterdir()) == []


def test_a_proxy_error_page_is_named_by_its_status_not_parsed():
    page = httpx.Response(502, content=b"<html>Bad Gateway</html>", headers={"content-type": "text/html"})
    client = Client("http://fluxhook.test", transport=httpx.MockTransport(lambda request: page))
    with pytest.raises(ServerRefused) as raised:
        client.job("job_1")
    assert raised.value.message == "GET /v1/jobs/job_1 answered 502 Bad Gateway (text/html)"


def test_the_api_key_travels_only_in_the_authorization_header():
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": [], "next_cursor": None})

    args = parser().parse_args(["jobs", "--status", "failed"])
    out, err = io.StringIO(), io.StringIO()
    status = run_client(args, {"FLUXHOOK_URL": "http://fluxhook.test", "FLUXHOOK_API_KEY": API_KEY},
                        transport=httpx.MockTransport(record), stdout=out, stderr=err)
    assert status == 0
    [request] = seen
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert str(request.url) == "http://fluxhook.test/v1/jobs?status=failed&limit=20"
    assert request.headers["user-agent"] == f"fluxhook-cli/{version('fluxhook')}"


def test_params_are_json_when_they_parse_and_text_otherwise():
    args = parser().parse_args(["submit", "--model", "flux-dev", "a fox", "--param", "steps=28",
                                "--param", "aspect_ratio=16:9", "--param", 'tag="007"', "--param",
                                "raw=true", "--width", "512", "--metadata", "order=12"])
    assert submit_body(args) == {
        "provider": "auto", "model": "flux-dev", "metadata": {"order": 12},
        "input": {"prompt": "a fox", "width": 512, "steps": 28, "aspect_ratio": "16:9",
                  "tag": "007", "raw": True},
    }


def test_a_param_without_a_value_is_refused_naming_the_flag_before_any_request():
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request should be made")

    args = parser().parse_args(["submit", "--model", "flux-dev", "--param", "width"])
    err = io.StringIO()
    assert run_client(args, {}, transport=httpx.MockTransport(never), stderr=err) == 2
    assert err.getvalue() == "fluxhook: --param takes KEY=VALUE, got 'width'\n"


def test_the_server_url_is_the_flag_then_fluxhook_url_then_the_public_url_then_serves_own():
    env = {"FLUXHOOK_URL": "http://a.test/", "FLUXHOOK_PUBLIC_URL": "https://b.test", "FLUXHOOK_PORT": "9001"}
    assert server_url("http://flag.test", env) == "http://flag.test"
    assert server_url(None, env) == "http://a.test"
    assert server_url(None, {**env, "FLUXHOOK_URL": ""}) == "https://b.test"
    assert server_url(None, {"FLUXHOOK_PORT": "9001"}) == "http://127.0.0.1:9001"
    assert server_url(None, {}) == "http://127.0.0.1:8000"
    with pytest.raises(ValueError, match=r"^FLUXHOOK_URL must be an http\(s\) URL, got 'ftp://x'$"):
        server_url(None, {"FLUXHOOK_URL": "ftp://user:pw@x"})


def test_the_timeline_puts_attempts_events_and_delivery_attempts_in_time_order():
    job = {"id": "job_1", "status": "succeeded", "created_at": "2026-11-22T10:00:00.000Z",
           "attempts": [{"provider": "bfl", "outcome": "accepted", "http_status": 200,
                         "provider_job_id": "t1", "at": "2026-11-22T10:00:00.100Z"}]}
    events = [Event(3, "job.succeeded", {"timestamp": "2026-11-22T10:00:02.000Z",
                                         "data": {"status": "succeeded", "completion_source": "poll",
                                                  "outputs": [{}]}}),
              Event(2, "job.submitted", {"timestamp": "2026-11-22T10:00:00.200Z",
                                         "data": {"status": "submitted"}})]
    deliveries = [{"event_type": "job.succeeded", "url": "https://r.test/h", "status": "pending",
                   "created_at": "2026-11-22T10:00:02.000Z",
                   "attempts": [{"attempt": 1, "at": "2026-11-22T10:00:02.500Z", "status_code": 503,
                                 "duration_ms": 12, "next_attempt_at": "2026-11-22T10:00:07.500Z"}]}]
    assert [(m.at[11:], m.text) for m in timeline(job, events, deliveries)] == [
        ("10:00:00.000Z", "created: queued"),
        ("10:00:00.100Z", "submit to bfl: accepted (HTTP 200), task t1"),
        ("10:00:00.200Z", "event #2 job.submitted: submitted"),
        ("10:00:02.000Z", "event #3 job.succeeded: succeeded by poll, 1 image"),
        ("10:00:02.500Z", "delivery of job.succeeded to https://r.test/h: attempt 1: HTTP 503 in 12 ms, "
                          "next try 2026-11-22T10:00:07.500Z"),
    ]


def test_the_jobs_table_aligns_its_columns_and_keeps_prompts_short_and_on_one_line():
    jobs = [{"id": "job_1", "status": "failed", "provider": "bfl", "model": "flux-dev", "outputs": [],
             "created_at": "2026-11-22T10:00:00.000Z", "input": {"prompt": "two\nlines " + "x" * 60}},
            {"id": "job_22", "status": "succeeded", "provider": "runcomfy", "model": "flux-pro-1.1",
             "outputs": [{}], "created_at": "2026-11-22T10:00:01.000Z", "input": {}}]
    header, first, second = jobs_table(jobs)
    assert header.index("STATUS") == first.index("failed") == second.index("succeeded")
    assert first.endswith("two lines " + "x" * 29 + "…")
    assert second.split() == ["job_22", "succeeded", "runcomfy", "flux-pro-1.1", "1",
                              "2026-11-22T10:00:01.000Z"]


def test_the_status_line_narrows_its_bar_to_fit_and_bounces_when_progress_is_unknown():
    known = status_line("job_1 running", 0.5, 63, 0, 80, "1.0 kB/2.0 kB")
    assert known == f"{SPINNER[0]} job_1 running [{'█' * 12}{'░' * 12}]  50% 1:03 1.0 kB/2.0 kB"
    narrow = status_line("job_1 running", 0.5, 63, 0, 40)
    assert len(narrow) == 39 and narrow.endswith("]  50% 1:03")
    frames = [status_line("job_1 queued", None, 0, tick, 80) for tick in range(3)]
    assert len(set(frames)) == 3 and all("███" in frame for frame in frames)


def test_the_terminal_display_keeps_each_change_above_the_status_line_and_restores_the_cursor():
    screen = io.StringIO()
    job = {"id": "job_1", "status": "queued", "provider": "bfl", "model": "flux-dev"}
    with TerminalDisplay(screen, interval=60) as live:
        live.job(job)
        live.event(Event(1, "job.succeeded", {"data": {**job, "status": "succeeded", "outputs": [{}],
                                                       "completion_source": "poll"}}))
        advance = live.downloading("job_1_0.png", 2000)
        advance(1000)
    parts = screen.getvalue().split(CLEAR_LINE)
    assert parts[0] == "\x1b[?25l" and parts[-1] == "\x1b[?25h"
    assert "job_1 queued: bfl flux-dev\n" in parts and "job_1 succeeded by poll, 1 image\n" in parts
    assert parts[-2] == status_line("job_1_0.png", 0.5, 0, 0, 80, "1.0 kB/2.0 kB")[: len(parts[-2])]


def test_an_output_that_cannot_be_written_is_a_clear_error_not_a_traceback(tmp_path):
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"image"))
    client = Client("http://fluxhook.test", transport=transport)
    output = {"index": 0, "sha256": hashlib.sha256(b"image").hexdigest(), "bytes": 5}
    with pytest.raises(ClientError) as raised:
        client.download("job_1", output, tmp_path / "missing" / "job_1_0.png")
    assert raised.value.message.startswith(f"cannot write {tmp_path / 'missing' / 'job_1_0.png'}: ")
