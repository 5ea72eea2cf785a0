"""Settings mistakes, made the way an operator makes them: `fluxhook` run as a real process.

Each mistake ends in one line naming the setting (or the flag) and a non-zero exit, never a
traceback, and before anything starts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from tests.e2e import ROOT, TERMINAL, free_port, run_fluxhook, wait_up


def fluxhook(args: list[str], env: dict[str, str], *, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m service.cli <args>` with exactly these FLUXHOOK_* variables (none inherited)."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("FLUXHOOK_", "BFL_", "COMETAPI_", "APIFRAME_", "RUNCOMFY_", "AWS_"))}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=timeout)


def refused(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The one-line refusal: non-zero exit, every fragment in stderr, no traceback."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    return result.stderr


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory that exists and cannot be written in, even by root (a read-only mount)."""
    if os.geteuid() != 0:
        path = tmp_path / "read-only"
        path.mkdir(mode=0o500)
        return path
    path = Path("/sys")  # sysfs: read-only for everyone in a container; root still cannot add files
    assert not os.access(path / "fluxhook-probe", os.F_OK)
    return path


# (case, the variables, what the message must say). One line per mistake the issue names, and
# one per kind of range a setting has.
MISTAKES = [
    ("unknown log level", {"FLUXHOOK_LOG_LEVEL": "loud"},
     "FLUXHOOK_LOG_LEVEL must be one of debug, info, warning, error, got 'loud'"),
    ("unknown log format", {"FLUXHOOK_LOG_FORMAT": "xml"}, "FLUXHOOK_LOG_FORMAT must be one of text, json"),
    ("zero worker concurrency", {"FLUXHOOK_WORKER_CONCURRENCY": "0"},
     "FLUXHOOK_WORKER_CONCURRENCY must be at least 1, got 0"),
    ("poll base above its cap", {"FLUXHOOK_POLL_BASE_SECONDS": "60", "FLUXHOOK_POLL_MAX_SECONDS": "30"},
     "FLUXHOOK_POLL_BASE_SECONDS (60) must not be above its cap FLUXHOOK_POLL_MAX_SECONDS (30)"),
    ("retry base above its cap", {"FLUXHOOK_RETRY_BASE_SECONDS": "5", "FLUXHOOK_RETRY_MAX_SECONDS": "1"},
     "FLUXHOOK_RETRY_BASE_SECONDS (5) must not be above its cap FLUXHOOK_RETRY_MAX_SECONDS (1)"),
    ("negative timeout", {"FLUXHOOK_JOB_TIMEOUT_SECONDS": "-5"},
     "FLUXHOOK_JOB_TIMEOUT_SECONDS must not be negative, got -5"),
    ("zero timeout", {"FLUXHOOK_HTTP_TIMEOUT_SECONDS": "0"},
     "FLUXHOOK_HTTP_TIMEOUT_SECONDS must be more than 0"),
    ("zero poll interval", {"FLUXHOOK_POLL_BASE_SECONDS": "0"},
     "FLUXHOOK_POLL_BASE_SECONDS must be more than 0"),
    ("zero body cap", {"FLUXHOOK_MAX_BODY_BYTES": "0"}, "FLUXHOOK_MAX_BODY_BYTES must be at least 1, got 0"),
    ("zero pool", {"FLUXHOOK_DATABASE_POOL_SIZE": "0"}, "FLUXHOOK_DATABASE_POOL_SIZE must be at least 1"),
    ("zero deliveries at once", {"FLUXHOOK_WEBHOOK_PER_DESTINATION": "0"},
     "FLUXHOOK_WEBHOOK_PER_DESTINATION must be at least 1"),
    ("not a number", {"FLUXHOOK_TASK_LEASE_SECONDS": "two minutes"},
     "FLUXHOOK_TASK_LEASE_SECONDS must be a number, got 'two minutes'"),
    ("not finite", {"FLUXHOOK_WORKER_IDLE_SECONDS": "nan"},
     "FLUXHOOK_WORKER_IDLE_SECONDS must be a finite number"),
    ("port out of range", {"FLUXHOOK_PORT": "70000"}, "FLUXHOOK_PORT must be at most 65535, got 70000"),
    ("presigned URL past S3's week", {"FLUXHOOK_BLOB_REDIRECT_SECONDS": "1000000"},
     "FLUXHOOK_BLOB_REDIRECT_SECONDS must be at most 604800"),
    ("unknown crash point", {"FLUXHOOK_CRASH_AT": "submit.sometime"},
     "FLUXHOOK_CRASH_AT names unknown points"),
    ("bad private destination", {"FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS": "10.0.0.1/8"},
     "FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS: '10.0.0.1/8'"),
    ("bad simulator knob", {"FLUXHOOK_SIM_FAILURE_RATE": "3"},
     "FLUXHOOK_SIM_FAILURE_RATE: must be between 0 and 1"),
]


@pytest.mark.parametrize(("env", "message"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_a_bad_setting_stops_serve_with_one_line_naming_it(tmp_path, env, message):
    data = tmp_path / "data"
    env = {"FLUXHOOK_DATA_DIR": str(data), "FLUXHOOK_PORT": str(free_port()), **env}
    stderr = refused(fluxhook(["serve"], env), message)
    assert stderr.startswith("fluxhook: configuration error:") and stderr.count("\n") == 1
    assert not data.exists()  # refused before anything was created


def test_a_data_dir_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "a-file").write_text("")
    data = tmp_path / "a-file" / "data"
    refused(fluxhook(["serve", "--port", str(free_port())], {"FLUXHOOK_DATA_DIR": str(data)}),
            f"FLUXHOOK_DATA_DIR: cannot create {data}: Not a directory")


def test_a_data_dir_that_cannot_be_written_is_named(tmp_path):
    data = unwritable_dir(tmp_path)
    refused(fluxhook(["worker"], {"FLUXHOOK_DATA_DIR": str(data)}),
            f"FLUXHOOK_DATA_DIR: cannot write in {data}")


def test_a_port_in_use_is_reported_first_naming_the_flag_and_nothing_starts(tmp_path):
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stderr = refused(fluxhook(["serve", "--port", str(port)], {"FLUXHOOK_DATA_DIR": str(data)}),
                         f"address 127.0.0.1:{port} is already in use", "--port")
    assert "FLUXHOOK_DATA_DIR" not in stderr and not data.exists()  # no data dir, no migrations


@pytest.mark.e2e  # slow: the pool gives a database 30 s to answer
def test_a_database_that_cannot_be_reached_is_named_without_its_password(tmp_path):
    url = f"postgresql://app:db-password-MARK@127.0.0.1:{free_port()}/fluxhook"  # nothing listens
    env = {"FLUXHOOK_DATA_DIR": str(tmp_path), "FLUXHOOK_DATABASE_URL": url}
    stderr = refused(fluxhook(["serve", "--port", str(free_port())], env),
                     "FLUXHOOK_DATABASE_URL: cannot connect to PostgreSQL at app@127.0.0.1")
    assert "db-password-MARK" not in stderr


def test_a_port_flag_out_of_range_is_named(tmp_path):
    refused(fluxhook(["serve", "--port", "99999"], {"FLUXHOOK_DATA_DIR": str(tmp_path)}),
            "--port must be from 1 to 65535, got 99999")


def test_a_misspelt_variable_is_warned_about_naming_the_closest_setting(tmp_path):
    env = {"FLUXHOOK_DATA_DIR": str(tmp_path), "FLUXHOOK_PUBLIC_URL": "http://127.0.0.1:9",
           "FLUXHOOK_WORKER_CONCURENCY": "4", "FLUXHOOK_SIMULATOR": "off"}
    result = fluxhook(["tick"], env)
    assert result.returncode == 0, result.stderr  # a warning, not a refusal
    assert ("FLUXHOOK_WORKER_CONCURENCY is not a fluxhook setting "
            "(did you mean FLUXHOOK_WORKER_CONCURRENCY?); it is ignored") in result.stderr


SECRETS = {
    "FLUXHOOK_API_KEY": "api-key-MARK", "FLUXHOOK_SECRET_KEY": "secret-key-MARK",
    "FLUXHOOK_WEBHOOK_SECRET": "whsec_" + "TUFSSy1tYXJrLU1BUkstbWFyay1NQVJLLW1h",
    "BFL_API_KEY": "bfl-MARK", "RUNCOMFY_API_TOKEN": "runcomfy-MARK",
    "FLUXHOOK_DATABASE_URL": "postgresql://app:db-password-MARK@db.internal:5432/fluxhook",
    "AWS_ACCESS_KEY_ID": "AKIA-MARK", "AWS_SECRET_ACCESS_KEY": "aws-secret-MARK",
}


def test_check_prints_the_effective_configuration_with_secrets_masked(tmp_path):
    data = tmp_path / "data"
    env = {**SECRETS, "FLUXHOOK_DATA_DIR": str(data), "FLUXHOOK_BLOB_URL": "s3://bucket/images",
           "FLUXHOOK_PUBLIC_URL": "https://hooks.example.com", "FLUXHOOK_POLL_MAX_SECONDS": "45"}
    result = fluxhook(["check", "--port", "9123"], env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "MARK" not in out + result.stderr
    for line in ("FLUXHOOK_API_KEY = ***", "FLUXHOOK_SECRET_KEY = ***", "FLUXHOOK_WEBHOOK_SECRET = ***",
                 "BFL_API_KEY = ***", "RUNCOMFY_API_TOKEN = ***", "AWS_SECRET_ACCESS_KEY = ***",
                 "FLUXHOOK_DATABASE_URL = postgresql://app:***@db.internal:5432/fluxhook",
                 "FLUXHOOK_POLL_MAX_SECONDS = 45", "FLUXHOOK_POLL_BASE_SECONDS = 2  (default)",
                 "FLUXHOOK_PORT = 9123", "providers: bfl (key set), runcomfy (key set)",
                 "configuration is valid"):
        assert line in out.splitlines() or line in out, line
    assert not data.exists()  # check creates nothing


def test_check_shows_where_the_simulated_fal_queue_and_its_jwks_are(tmp_path):
    result = fluxhook(["check", "--port", "9124"], {"FLUXHOOK_DATA_DIR": str(tmp_path / "data"),
                                                    "FAL_KEY": ""})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "FAL_QUEUE_URL = http://127.0.0.1:9124/simulator/fal  (default)" in lines
    assert "FAL_JWKS_URL = http://127.0.0.1:9124/simulator/fal/.well-known/jwks.json  (default)" in lines


def test_check_exits_non_zero_naming_what_is_invalid(tmp_path):
    result = fluxhook(["check"], {"FLUXHOOK_DATA_DIR": str(tmp_path), "FLUXHOOK_WORKER_CONCURRENCY": "0",
                                  "FLUXHOOK_API_KEY": "api-key-MARK"})
    refused(result, "configuration error: FLUXHOOK_WORKER_CONCURRENCY must be at least 1, got 0")
    assert "FLUXHOOK_API_KEY = ***" in result.stdout and "MARK" not in result.stdout


def test_check_judges_the_data_dir_without_creating_it(tmp_path):
    (tmp_path / "a-file").write_text("")
    refused(fluxhook(["check"], {"FLUXHOOK_DATA_DIR": str(tmp_path / "a-file" / "data")}),
            "FLUXHOOK_DATA_DIR: cannot create")
    refused(fluxhook(["check"], {"FLUXHOOK_DATA_DIR": str(unwritable_dir(tmp_path))}), "FLUXHOOK_DATA_DIR")


def test_a_refusal_is_a_json_line_when_json_logs_are_asked_for(tmp_path):
    result = fluxhook(["serve"], {"FLUXHOOK_DATA_DIR": str(tmp_path), "FLUXHOOK_LOG_FORMAT": "json",
                                  "FLUXHOOK_WORKER_CONCURRENCY": "0"})
    refused(result)
    [line] = result.stderr.splitlines()
    message = "configuration error: FLUXHOOK_WORKER_CONCURRENCY must be at least 1, got 0"
    assert json.loads(line) | {"time": "t"} == {"time": "t", "level": "error", "logger": "fluxhook",
                                                  "message": message}


@pytest.mark.e2e
@pytest.mark.anyio
async def test_json_log_format_gives_one_json_object_per_line_through_a_whole_job(tmp_path):
    port = free_port()
    env = {"FLUXHOOK_DATA_DIR": str(tmp_path / "data"), "FLUXHOOK_LOG_FORMAT": "json",
           "FLUXHOOK_SIMULATOR": "on", "FLUXHOOK_LOG_LEVEL": "debug"}
    log = tmp_path / "serve.log"
    process = run_fluxhook(["serve", "--port", str(port)], env, log)
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_up(f"{base}/healthz", process)
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            job = (await client.post("/v1/jobs", json={"model": "flux-pro-1.1",
                                                       "input": {"prompt": "a lighthouse"}})).json()
            with anyio.fail_after(60):
                while (await client.get(f"/v1/jobs/{job['id']}", params={"wait": "1"})).json()["status"] \
                        not in TERMINAL:
                    pass
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert all(isinstance(r, dict) and {"time", "level", "logger", "message"} <= set(r) for r in records)
    messages = " ".join(r["message"] for r in records)
    assert "fluxhook ready" in messages and "1 output(s) stored" in messages
    assert {"uvicorn.error", "fluxhook"} <= {r["logger"] for r in records}  # uvicorn's lines too
