"""A process imports only what it needs (issue 10, cold start; bench/cold_start.py times it):
the web app neither the simulator, Pillow nor an HTTP client, and `fluxhook tick` with nothing
due no web server, no HTTP client and nothing else it would only need to send, verify or watch."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.e2e import ROOT

# Never needed by the web app with the simulator off; nor by a tick, which serves nothing.
SIMULATOR_AND_IMAGES = ("PIL", "service.simulator.app")
# The dashboard's templates are read on its first request (handlers/dashboard/).
TEMPLATES = ("jinja2", "starlette.templating")
WEB = ("uvicorn", "starlette", "handlers")
# Made on first use (service/http_clients.py): nothing is sent before a request or due work.
HTTP_CLIENT = ("httpx", "httpcore", "h11", "service.egress_transport")
# fal's Ed25519 checks; the Prometheus counters (WorkContext.metrics); Retry-After dates
# (service/backoff.py); inotify, for the wake-ups a tick never waits for (storage/sqlite/wakeups.py).
SEND_VERIFY_OR_WATCH = ("cryptography", "prometheus_client", "service.metrics", "email", "ctypes")
# Only the configured providers' adapters (service/resources.py); the test configures BFL.
OTHER_PROVIDERS = tuple(f"service.providers.{name}"
                        for name in ("apiframe", "cometapi", "fal", "replicate", "runcomfy"))


def imported_by(args: list[str], env: dict[str, str] | None = None) -> set[str]:
    """The top-level and dotted names of every module `python -X importtime <args>` imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=60, check=True,
    )
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", done.stderr, re.M)
    assert "encodings" in names  # the trace was read
    return set(names)


def loaded(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def test_the_web_app_imports_neither_the_simulator_nor_pillow_nor_an_http_client():
    names = imported_by(["-c", "import service.app"])
    assert "service.app" in names
    assert loaded(names, SIMULATOR_AND_IMAGES + TEMPLATES + HTTP_CLIENT) == []
    assert loaded(names, ("service.simulator",)) == []


def test_a_tick_with_nothing_due_imports_only_what_it_uses(tmp_path):
    names = imported_by(["-m", "service.cli", "tick"], {
        "FLUXHOOK_DATA_DIR": str(tmp_path / "data"),
        "FLUXHOOK_PUBLIC_URL": "https://hooks.example.com",
        "FLUXHOOK_SIMULATOR": "off",
        "FLUXHOOK_SECRET_KEY": "cold-start-secret-key",
        "BFL_API_KEY": "test-bfl-key",
        "FLUXHOOK_LOG_LEVEL": "warning",
    })
    assert {"service.tick", "service.providers.bfl"} <= names  # it ran, with BFL configured
    assert loaded(names, SIMULATOR_AND_IMAGES + WEB) == []
    assert loaded(names, HTTP_CLIENT + SEND_VERIFY_OR_WATCH + OTHER_PROVIDERS) == []
