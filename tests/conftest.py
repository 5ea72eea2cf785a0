"""Shared fixtures: real SQLite in tmp_path, a hand-driven clock, settings from a dict."""

from __future__ import annotations

import random
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import open_context
from service.context import WorkContext
from service.ids import new_job_id, new_webhook_secret
from service.rules import JOB_RULES
from service.settings import Settings
from storage import open_database, sqlite_url
from storage.records import JobRecord, NewJob
from tests.e2e import stop_process_type
from tests.postgres import empty_postgres_url, postgres_server, postgres_url  # noqa: F401 (fixtures)

START_MS = 1_790_000_000_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    """Epoch milliseconds that only move when a test says so."""

    def __init__(self, start: int = START_MS) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


BFL_TEST_ENV = {
    "BFL_API_KEY": "test-bfl-key",
    "BFL_BASE_URL": "https://api.bfl.ai",
    "FLUXHOOK_PUBLIC_URL": "https://hooks.example.com",
    "FLUXHOOK_SECRET_KEY": "test-secret-key",
    "FLUXHOOK_SIMULATOR": "off",
}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3-compatible server on loopback for the whole session: moto's server mode."""
    from tests.e2e import free_port

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=handle, stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"moto's server exited: {log.read_text()}"
            try:
                httpx.get(f"{endpoint}/moto-api/")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "moto's server did not start in 30 s"
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def s3_env(endpoint: str, bucket: str, prefix: str = "fluxhook") -> dict[str, str]:
    return {
        "FLUXHOOK_BLOB_URL": f"s3://{bucket}/{prefix}",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test-access-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret-key",
        "AWS_REGION": "us-east-1",
    }


def new_bucket(endpoint: str) -> str:
    bucket = f"blobs-{secrets.token_hex(6)}"
    httpx.put(f"{endpoint}/{bucket}").raise_for_status()
    return bucket


@pytest.fixture(params=["local", "s3"])
def blob_backend(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings for each blob store in turn (S3: a fresh bucket on the session's server).
    A test module opts in by overriding `blob_env` with it."""
    if request.param == "local":
        return {}
    endpoint = request.getfixturevalue("s3_endpoint")
    return s3_env(endpoint, new_bucket(endpoint))


@pytest.fixture
def blob_env() -> dict[str, str]:
    """Blob store settings every test's settings get; the default: the local directory."""
    return {}


# The storage backends: every test that opens a database (through `make_settings`, `ctx`, `api`,
# `database`, the end-to-end stacks) runs once per backend, unless marked `sqlite_only`.
BACKENDS = ["sqlite", "postgres"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        only_sqlite = metafunc.definition.get_closest_marker("sqlite_only") is not None
        metafunc.parametrize("backend", ["sqlite"] if only_sqlite else BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend_env(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings naming this test's database: none for SQLite (the file in the data
    directory), FLUXHOOK_DATABASE_URL of a fresh migrated database for PostgreSQL."""
    if backend == "sqlite":
        return {}
    # A small pool: a test's process runs few transactions at once, and opening 10 costs time.
    return {"FLUXHOOK_DATABASE_URL": request.getfixturevalue("postgres_url"),
            "FLUXHOOK_DATABASE_POOL_SIZE": "4"}


@pytest.fixture
def e2e_backend(backend_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """End-to-end tests opt in (`usefixtures("e2e_backend")`): tests/e2e.py `fluxhook_env`, and
    so `running_stack` and the processes started with it, use this test's backend."""
    from tests import e2e

    e2e.BACKEND_ENV.clear()
    e2e.BACKEND_ENV.update(backend_env)
    try:
        yield backend_env
    finally:
        e2e.BACKEND_ENV.clear()


@pytest.fixture
def make_settings(
    tmp_path: Path, blob_env: dict[str, str], backend_env: dict[str, str]
) -> Callable[..., Settings]:
    def make(**env: str) -> Settings:
        merged = {**BFL_TEST_ENV, "FLUXHOOK_DATA_DIR": str(tmp_path / "data"), **backend_env,
                  **blob_env, **env}
        return Settings.from_env(merged)

    return make


@pytest.fixture
async def database(backend_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh, migrated database with its stores (service/contracts.py `Stores`), per backend.
    Its `transact`/`query` take the backend's own connection: tests that use them are that
    backend's."""
    url = backend_env.get("FLUXHOOK_DATABASE_URL") or sqlite_url(tmp_path / "fluxhook.db")
    database = await open_database(url, rules=JOB_RULES, pool_size=4)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def transport() -> httpx.AsyncBaseTransport | None:
    """Tests override this (e.g. with respx's transport) to answer provider calls."""
    return None


@pytest.fixture
async def ctx(
    make_settings: Callable[..., Settings], clock: FakeClock,
    transport: httpx.AsyncBaseTransport | None,
) -> AsyncIterator[WorkContext]:
    async with open_context(make_settings(), transport=transport, clock=clock,
                            rand=random.Random(7)) as context:
        yield context


@pytest.fixture
def make_job(ctx: WorkContext, clock: FakeClock) -> Callable[..., Any]:
    async def make(**fields: Any) -> JobRecord:
        now = clock()
        new = NewJob(
            id=fields.pop("id", new_job_id(now)),
            provider=fields.pop("provider", "bfl"),
            model=fields.pop("model", "flux-pro-1.1"),
            input=fields.pop("input", {"prompt": "a red fox", "width": 512, "height": 512}),
            metadata=fields.pop("metadata", {}),
            webhook_secret=fields.pop("webhook_secret", new_webhook_secret()),
            idempotency_key=fields.pop("idempotency_key", None),
            request_hash=fields.pop("request_hash", None),
            deadline_at=fields.pop("deadline_at", now + 900_000),
        )
        assert not fields, f"unknown job fields {fields}"
        job, _ = await ctx.store.jobs.create_job(new, now=now)
        return job

    return make


@pytest.fixture
async def api(
    make_settings: Callable[..., Settings], clock: FakeClock,
    transport: httpx.AsyncBaseTransport | None,
) -> AsyncIterator[Api]:
    """fluxhook's app with its lifespan running (workers and the callback applier off: tests drive
    them), and a client.

    Servers hand the lifespan's state to every request's scope; this does the same.
    """
    from service.app import create_app

    app = create_app(make_settings(), transport=transport, clock=clock, rand=random.Random(7),
                     run_workers=False, apply_callbacks=False)
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state),
                                     base_url="https://hooks.example.com") as client:
            yield Api(client, app.state.ctx)


class Api:
    def __init__(self, client: httpx.AsyncClient, ctx: WorkContext) -> None:
        self.client = client
        self.ctx = ctx

    async def callback(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST a provider callback, then apply what it recorded, as the applier does right after
        the answer (service/callbacks.py; the fixture's own applier is off)."""
        from service.callbacks import apply_all

        response = await self.client.post(path, **kwargs)
        await apply_all(self.ctx)
        return response


def assert_error_shape(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """Every error response has the one shape: {"error": {"code", "message", "details"}}."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], list)
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started (Procfile process types): stopped as a Procfile runner would."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop_process_type(process)
