"""The AWS Lambda entry point serves fluxhook from API Gateway v2 (HTTP API, payload 2.0) events.

The provider is the simulator in its own process, over loopback. Its callback goes to a capture
server standing where API Gateway would be; the test hands the captured request to the handler
as the event API Gateway would make of it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.errors import ConfigError
from service.lambda_handler import LambdaHandler, lambda_settings
from service.webhook_signing import new_secret
from tests.e2e import free_port, run_fluxhook

pytestmark = [pytest.mark.e2e]


@dataclass
class Captured:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class CaptureServer:
    """Stands at the public URL: records each callback and answers 200, as API Gateway would
    once the function had run."""

    requests: list[Captured] = field(default_factory=list)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                requests.append(Captured(self.path, dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def capture() -> Iterator[tuple[CaptureServer, str]]:
    server = CaptureServer()
    http = ThreadingHTTPServer(("127.0.0.1", 0), server.handler())
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{http.server_address[1]}"
    finally:
        http.shutdown()
        http.server_close()


@pytest.fixture
def simulator_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = run_fluxhook(["simulator", "--port", str(port)],
                           {"FLUXHOOK_SIM_LATENCY_S": "0.2,0.4"}, tmp_path / "simulator.log")
    url = f"http://127.0.0.1:{port}"
    try:
        until(lambda: _answers(url), what="the simulator to start")
        yield url
    finally:
        process.kill()
        process.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/_sim/stats")
    except httpx.TransportError:
        return False
    return True


def until(predicate: Any, *, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def http_api_event(method: str, path: str, *, headers: dict[str, str] | None = None,
                   body: bytes | None = None, query: str = "") -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) event, as Lambda receives it."""
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {"host": "abc123.execute-api.eu-west-1.amazonaws.com",
                    "x-forwarded-proto": "https", **(headers or {})},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.eu-west-1.amazonaws.com",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "192.0.2.10", "userAgent": "test"},
            "requestId": f"req-{time.monotonic_ns()}",
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": int(time.time() * 1000),
        },
        "isBase64Encoded": body is not None,
    }
    if body is not None:
        event["body"] = base64.b64encode(body).decode()
    return event


def json_body(response: dict[str, Any]) -> Any:
    assert not response.get("isBase64Encoded"), response
    return json.loads(response["body"])


def test_lambda_handler_serves_a_job_its_provider_callback_and_the_job_from_http_api_events(
    tmp_path: Path, capture: tuple[CaptureServer, str], simulator_url: str
):
    captured, public_url = capture
    settings = lambda_settings({
        "FLUXHOOK_DATA_DIR": str(tmp_path / "data"),
        "FLUXHOOK_PUBLIC_URL": public_url,
        "FLUXHOOK_SECRET_KEY": "lambda-secret-key",
        "FLUXHOOK_WEBHOOK_SECRET": new_secret(),
        "FLUXHOOK_SIMULATOR": "off",
        "FLUXHOOK_LOG_LEVEL": "warning",
        "BFL_BASE_URL": simulator_url,
        "BFL_API_KEY": "lambda-bfl-key",
    })
    assert settings.serverless  # Lambda has no CPU between events: always serverless
    handler = LambdaHandler(settings)
    app = handler.app
    try:
        submitted = handler(http_api_event("POST", "/v1/jobs", headers={"content-type": "application/json"},
                                           body=json.dumps({"provider": "bfl", "model": "flux-pro-1.1",
                                                            "input": {"prompt": "a lambda", "width": 256,
                                                                      "height": 256}}).encode()), None)
        assert submitted["statusCode"] == 202, submitted
        job = json_body(submitted)
        assert job["status"] == "submitted" and job["provider_job_id"]  # submitted in the event
        ctx = app.app.state.ctx  # the lifespan ran once, and its resources serve every event

        until(lambda: captured.requests, what="the provider's callback")
        [callback] = captured.requests
        assert callback.path.startswith("/v1/callbacks/bfl/")
        called_back = handler(http_api_event("POST", callback.path, headers=callback.headers,
                                             body=callback.body), None)
        assert called_back["statusCode"] == 200, called_back
        # Stored and final before the callback is answered.
        assert json_body(called_back) == {"received": True, "job_id": job["id"], "status": "succeeded",
                                          "duplicate": False}

        fetched = handler(http_api_event("GET", f"/v1/jobs/{job['id']}"), None)
        assert fetched["statusCode"] == 200
        doc = json_body(fetched)
        assert doc["status"] == "succeeded" and doc["completion_source"] == "callback"
        [output] = doc["outputs"]
        image = handler(http_api_event("GET", f"/v1/jobs/{job['id']}/outputs/0"), None)
        assert image["statusCode"] == 200 and image["isBase64Encoded"]
        assert hashlib.sha256(base64.b64decode(image["body"])).hexdigest() == output["sha256"]
        task = httpx.get(f"{simulator_url}/_sim/tasks/{job['provider_job_id']}").json()
        assert task["sha256s"] == [output["sha256"]]

        missing = handler(http_api_event("GET", "/v1/jobs/job_nope"), None)
        assert missing["statusCode"] == 404 and set(json_body(missing)) == {"error"}
        assert app.app.state.ctx is ctx

        # A scheduled direct invocation runs a tick (the job left nothing to do) and reports.
        report = handler({"fluxhook": "tick"}, None)
        assert report["finished"]
        assert report["ran"]["tasks"] == 0 and report["ran"]["pruned"] is not None
        assert report["due"] == {"tasks": {}, "deliveries": 0}
        assert report["scheduled"] == {"tasks": {}, "counted_up_to": 1000}
    finally:
        loop = asyncio.get_event_loop()
        loop.run_until_complete(app.close())
        loop.close()
        asyncio.set_event_loop(None)


def test_lambda_settings_refuse_to_start_without_the_secrets_an_instance_cannot_keep(tmp_path: Path):
    with pytest.raises(ConfigError, match="FLUXHOOK_SECRET_KEY, FLUXHOOK_WEBHOOK_SECRET") as raised:
        lambda_settings({"FLUXHOOK_PUBLIC_URL": "https://abc123.execute-api.eu-west-1.amazonaws.com",
                         "FLUXHOOK_DATA_DIR": str(tmp_path)})
    assert not (tmp_path / "secret_key").exists()  # no secret was made up instead
    assert "FLUXHOOK_PUBLIC_URL" not in str(raised.value)
