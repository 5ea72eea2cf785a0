"""Helpers for end-to-end tests: fluxhook and the simulator over real loopback HTTP."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port nothing listens on (yet): for a process to bind, or to be refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_fluxhook(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`fluxhook <args>` as a real process, its output appended to `log`."""
    with open(log, "ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


async def wait_up(url: str, process: subprocess.Popen[bytes] | None = None) -> None:
    """Until `url` answers at all (and `process`, if given, has not died)."""
    async with httpx.AsyncClient() as client:
        with anyio.fail_after(30):
            while True:
                assert process is None or process.poll() is None, "the process exited during start-up"
                try:
                    await client.get(url)
                    return
                except httpx.TransportError:
                    await anyio.sleep(0.1)


# The database settings of the running test's backend (conftest.py `e2e_backend` sets them):
# none for SQLite, FLUXHOOK_DATABASE_URL of the test's own PostgreSQL database.
BACKEND_ENV: dict[str, str] = {}


def fluxhook_env(data_dir: Path, public_url: str, provider_url: str, **extra: str) -> dict[str, str]:
    """Settings for a fluxhook whose BFL provider is a simulator at `provider_url`, on the
    running test's database backend."""
    return {
        **BACKEND_ENV,
        "FLUXHOOK_DATA_DIR": str(data_dir),
        "FLUXHOOK_PUBLIC_URL": public_url,
        "FLUXHOOK_SIMULATOR": "off",
        "FLUXHOOK_SECRET_KEY": "e2e-secret-key",
        "BFL_BASE_URL": provider_url,
        "BFL_API_KEY": "e2e-key",
        "FLUXHOOK_POLL_GRACE_SECONDS": "4",
        "FLUXHOOK_POLL_BASE_SECONDS": "0.5",
        "FLUXHOOK_POLL_MAX_SECONDS": "1",
        "FLUXHOOK_RETRY_BASE_SECONDS": "0.2",
        "FLUXHOOK_RETRY_MAX_SECONDS": "1",
        "FLUXHOOK_LOG_LEVEL": "warning",
        **extra,
    }


def job_body(n: int) -> dict[str, Any]:
    side = 256 + 32 * (n % 5)
    return {
        "provider": "bfl",
        "model": "flux-pro-1.1",
        "metadata": {"n": n},
        "input": {
            "prompt": f"e2e image number {n}",
            "width": side,
            "height": 256,
            "seed": n,
            "output_format": "png" if n % 2 else "jpeg",
        },
    }


async def submit_jobs(client: httpx.AsyncClient, count: int) -> list[str]:
    ids: list[str] = []

    async def one(n: int) -> None:
        response = await client.post("/v1/jobs", json=job_body(n))
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])

    async with anyio.create_task_group() as group:
        for n in range(count):
            group.start_soon(one, n)
    return ids


async def wait_terminal(client: httpx.AsyncClient, ids: list[str], *, timeout: float) -> dict[str, dict]:
    """Every job's final document, once all are terminal (or fail the test after `timeout`)."""
    docs: dict[str, dict] = {}
    with anyio.fail_after(timeout):
        while True:
            for job_id in ids:
                if docs.get(job_id, {}).get("status") in TERMINAL:
                    continue
                response = await client.get(f"/v1/jobs/{job_id}")
                if response.status_code == 200:
                    docs[job_id] = response.json()
            if all(docs.get(j, {}).get("status") in TERMINAL for j in ids):
                return docs
            await anyio.sleep(0.2)


async def simulator_tasks(provider_url: str) -> dict[str, dict]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{provider_url}/_sim/tasks")
    response.raise_for_status()
    return {task["id"]: task for task in response.json()}


async def assert_outputs_match_simulator(
    client: httpx.AsyncClient, docs: dict[str, dict], tasks: dict[str, dict]
) -> None:
    """Each stored image is byte-for-byte what the simulator made, and fluxhook serves it."""
    for doc in docs.values():
        task = tasks[doc["provider_job_id"]]
        assert [o["sha256"] for o in doc["outputs"]] == task["sha256s"], doc["id"]
        for output in doc["outputs"]:
            served = await client.get(output["url"])
            assert served.status_code == 200
            assert hashlib.sha256(served.content).hexdigest() == output["sha256"]
            assert served.headers["content-type"] == output["content_type"]


class Stack:
    """fluxhook under uvicorn with a simulator as every configured provider."""

    def __init__(self, base: str, provider_url: str, client: httpx.AsyncClient) -> None:
        self.base = base
        self.provider_url = provider_url
        self.client = client


@asynccontextmanager
async def running_stack(
    tmp_path: Path,
    sim_config: Any,
    *,
    provider_env: Callable[[str], dict[str, str]] | None = None,
    **env: str,
) -> AsyncIterator[Stack]:
    """Simulator + fluxhook (workers in-process), both on loopback, and a client for fluxhook.

    `provider_env(simulator_url)` adds settings, e.g. more providers served by the simulator.
    """
    from service.app import create_app
    from service.loopback import bind_loopback, serve, url_of
    from service.settings import Settings
    from service.simulator import create_simulator_app

    async with serve(create_simulator_app(sim_config)) as provider_url:
        sock = bind_loopback()
        extra = {**(provider_env(provider_url) if provider_env else {}), **env}
        settings = Settings.from_env(fluxhook_env(tmp_path / "data", url_of(sock), provider_url, **extra))
        async with (
            serve(create_app(settings), sock) as base,
            httpx.AsyncClient(base_url=base, timeout=30) as client,
        ):
            yield Stack(base, provider_url, client)


PROVIDER_PREFIXES = ("FLUXHOOK_", "BFL_", "COMETAPI_", "APIFRAME_", "RUNCOMFY_", "REPLICATE_", "FAL_")


def procfile() -> dict[str, str]:
    """The Procfile's process types and their command lines, as a Procfile runner reads them."""
    types: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            types[name.strip()] = command.strip()
    return types


def run_process_type(
    command: str, *, port: int, cwd: Path, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """One Procfile line run as honcho and foreman run it: `sh -c` in the app's directory, with
    a PORT of its own and the installed `fluxhook` on PATH. Nothing of fluxhook's settings is
    inherited from this test's environment; `env` is all the configuration there is. Its own
    session, so `stop_process_type` can stop the shell and whatever it started."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(PROVIDER_PREFIXES)}
    path = os.pathsep.join([str(Path(sys.executable).parent), inherited.get("PATH", "")])
    with open(log, "ab") as handle:
        return subprocess.Popen(
            ["sh", "-c", command],  # noqa: S607  (what a Procfile runner does)
            cwd=cwd,
            env={**inherited, "PATH": path, "PORT": str(port), **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def read_log(log: Path) -> str:
    """A process log's text so far ("" before the process wrote any), for assertion messages."""
    return log.read_text() if log.exists() else ""


def stop_process_type(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, as a Procfile runner does on stop; SIGKILL if ignored."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
