"""A process imports only what it needs (issue 10, cold start; bench/cold_start.py times it):
the web app neither the simulator nor Pillow, and `fluxhook tick` no web server at all."""

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


def test_the_web_app_imports_neither_the_simulator_nor_pillow():
    names = imported_by(["-c", "import service.app"])
    assert "service.app" in names
    assert loaded(names, SIMULATOR_AND_IMAGES + TEMPLATES) == []
    assert loaded(names, ("service.simulator",)) == []


def test_a_tick_with_nothing_due_imports_no_web_server_simulator_or_pillow(tmp_path):
    names = imported_by(["-m", "service.cli", "tick"], {
        "FLUXHOOK_DATA_DIR": str(tmp_path / "data"),
        "FLUXHOOK_PUBLIC_URL": "https://hooks.example.com",
        "FLUXHOOK_SIMULATOR": "off",
        "FLUXHOOK_SECRET_KEY": "cold-start-secret-key",
        "BFL_API_KEY": "test-bfl-key",
        "FLUXHOOK_LOG_LEVEL": "warning",
    })
    assert "service.tick" in names  # it ran
    assert loaded(names, SIMULATOR_AND_IMAGES + WEB) == []
