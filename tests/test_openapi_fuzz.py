"""Schemathesis against a live fluxhook (a real `fluxhook serve` process with its embedded
simulator): requests generated from /openapi.json, and every answer checked against the same
document. No 5xx, no status the document does not name, no body breaking its schema.

A bounded number of examples per operation (MAX_EXAMPLES), so it stays part of `make test`.
GET /v1/events is left out: its 200 is an endless stream (tests/test_openapi.py reads it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e import free_port, run_fluxhook

# Bounded, so the run stays part of `make test`; FUZZ_EXAMPLES=500 searches longer.
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
API_KEY = "fuzz-api-key"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]


@pytest.fixture(scope="module")
def live_fluxhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = {"FLUXHOOK_DATA_DIR": str(data / "data"), "FLUXHOOK_API_KEY": API_KEY,
           "FLUXHOOK_TICK_TOKEN": "fuzz-tick-token", "FLUXHOOK_TICK_SECONDS": "1",
           "FLUXHOOK_SECRET_KEY": "fuzz-secret-key", "FLUXHOOK_LOG_LEVEL": "warning"}
    process = run_fluxhook(["serve", "--port", str(port)], env, Path(data / "serve.log"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (data / "serve.log").read_text()
            try:
                httpx.get(f"{base}/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "fluxhook did not start"
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
    log = (data / "serve.log").read_text()
    assert "unhandled" not in log, log  # handlers/errors.py logs every 500 so


def operation_labels() -> list[str]:
    """Every operation of the document (read from the app itself, without a server)."""

    from service.catalog import Catalog
    from service.openapi import openapi_document
    from storage.records import EVENT_TYPES, JOB_EVENT_TYPES

    doc = openapi_document(Catalog.default(), (), event_types=EVENT_TYPES,
                           job_event_types=JOB_EVENT_TYPES, version="0")
    return sorted(f"{method.upper()} {path}" for path, item in doc["paths"].items()
                  for method in item if method in ("get", "post", "patch", "delete")
                  and path not in SKIPPED)


FRAMING_HEADERS = {"content-length", "transfer-encoding", "host", "connection", "expect", "te", "upgrade"}
SKIPPED = {"/v1/events"}  # its 200 is an endless stream (tests/test_openapi.py reads its start)
# Operations whose every parameter is any string and whose body (if any) any bytes: no request
# breaks their schema, so there is no negative case to generate.
NOTHING_TO_BREAK = {"GET /healthz", "GET /openapi.json", "GET /uploads/{token}",
                    "POST /v1/callbacks/{provider}/{token}"}


@pytest.fixture(scope="module")
def api_schema(live_fluxhook: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_fluxhook}/openapi.json")


# schemathesis's own pytest plugin does not run under this pytest, so each operation is a
# parametrized test driving hypothesis with the operation's case strategy.
@pytest.mark.e2e
@pytest.mark.parametrize(("label", "mode"), [
    *((label, GenerationMode.POSITIVE) for label in operation_labels()),
    *((label, GenerationMode.NEGATIVE) for label in operation_labels() if label not in NOTHING_TO_BREAK),
], ids=str)
def test_no_answer_is_a_5xx_or_breaks_the_document(
    api_schema: schemathesis.BaseSchema, label: str, mode: GenerationMode
) -> None:
    """Positive: requests the document allows; negative: requests it does not (wrong types,
    values out of range, missing fields), which must be refused in the documented way."""
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label

    @given(operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        # Negative cases add arbitrary headers; framing ones (`Content-Length: Zup`) make the
        # request malformed HTTP, which the HTTP server refuses (uvicorn's text/plain 400)
        # before fluxhook sees it: not the API's answer to check.
        for name in [h for h in (case.headers or {}) if h.lower() in FRAMING_HEADERS]:
            del case.headers[name]
        token = "fuzz-tick-token" if case.path == "/v1/tick" else API_KEY
        case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS, timeout=70)

    run()
