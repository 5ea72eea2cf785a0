"""GET /openapi.json: a valid OpenAPI 3.1 document that agrees with the running app: every route
is in it, every status it documents is reached by a real request, and its job `input` schemas
are the ones GET /v1/models publishes (and validation enforces). Schemathesis against a live
fluxhook is tests/test_openapi_fuzz.py."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from openapi_spec_validator import validate
from PIL import Image
from starlette.routing import Mount, Route

from service.app import create_app
from service.context import WorkContext
from service.loopback import bind_loopback, serve, url_of
from service.openapi import NOT_DOCUMENTED
from service.settings import Settings
from service.simulator import SimulatorConfig, create_simulator_app
from service.tokens import UPLOAD_PREFIX
from storage.errors import StorageUnavailable
from tests.conftest import assert_error_shape
from tests.e2e import fluxhook_env, job_body, wait_terminal

pytestmark = pytest.mark.anyio

API_KEY = "openapi-api-key"
TICK_TOKEN = "openapi-tick-token"
METHODS = ("get", "post", "put", "patch", "delete")


def documented(doc: dict[str, Any]) -> set[tuple[str, str, int]]:
    return {(method.upper(), path, int(status))
            for path, item in doc["paths"].items()
            for method, operation in item.items() if method in METHODS
            for status in operation["responses"]}


async def test_the_document_validates_as_openapi_3_1(api):
    doc = (await api.client.get("/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises on any breach of the OpenAPI 3.1 schema (JSON Schema 2020-12 included)


def served(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
    """Every (method, path) the routes serve, those of mounted routers included."""
    found = set()
    for route in routes:
        if isinstance(route, Route):
            found |= {(m, prefix + route.path) for m in (route.methods or ()) if m != "HEAD"}
        elif isinstance(route, Mount):
            found |= served(route.routes, prefix + route.path)
    return found


async def test_every_route_of_the_app_is_in_the_document_and_nothing_else(api):
    doc = (await api.client.get("/openapi.json")).json()
    app = create_app(api.ctx.settings, run_workers=False)
    routes = served(app.routes)
    left_out = {(m, p) for m, p in routes if p.startswith(tuple(NOT_DOCUMENTED))}
    assert ("GET", "/dashboard/") in left_out and ("POST", "/dashboard/login") in left_out
    assert {(m, p) for m, p, _ in documented(doc)} == routes - left_out
    assert not any(p.startswith(tuple(NOT_DOCUMENTED)) for p in doc["paths"])


async def test_the_job_input_schemas_are_the_ones_get_models_publishes(api):
    doc = (await api.client.get("/openapi.json")).json()
    models = (await api.client.get("/v1/models")).json()
    schemas = doc["components"]["schemas"]
    published = {f"Input.{p['name']}.{m['name']}": m["parameters"]
                 for p in models["providers"] for m in p["models"]}
    assert published  # the catalog is not empty, so the comparison means something
    assert {name: schemas[name] for name in schemas if name.startswith("Input.")} == published
    variants = schemas["JobRequest"]["allOf"][1]["anyOf"]
    assert {v["properties"]["input"]["$ref"].rsplit("/", 1)[1] for v in variants} == set(published)


async def test_every_error_body_in_the_document_is_the_one_error_shape(api):
    doc = (await api.client.get("/openapi.json")).json()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert response["content"] == {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    }, (method, path, status)


async def test_the_health_route_documents_503_and_answers_it_when_the_database_fails(api, monkeypatch):
    async def failing() -> bool:
        raise StorageUnavailable("database read failed: disk I/O error")

    monkeypatch.setattr(api.ctx.store, "ping", failing)
    doc = (await api.client.get("/openapi.json")).json()
    assert "503" in doc["paths"]["/healthz"]["get"]["responses"]
    assert_error_shape(await api.client.get("/healthz"), 503, "store_unavailable")


# Every documented status, reached by a real request to a live fluxhook --------------------------


def png(size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((size, size), 100).save(out, format="PNG")  # noise: it does not compress
    return out.getvalue()


def expired_upload_token(secret_key: str, upload_id: str) -> str:
    class LongAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 10 * 86_400

    serializer = URLSafeTimedSerializer(secret_key, salt="fluxhook.upload.v1", signer=LongAgo)
    return UPLOAD_PREFIX + str(serializer.dumps(upload_id))


def short(template: str) -> str:
    """A route template with the one-letter names the requests below use."""
    for name, letter in (("job_id", "j"), ("subscription_id", "s"), ("delivery_id", "d"), ("index", "i"),
                         ("token", "t"), ("provider", "p")):
        template = template.replace(f"{{{name}}}", f"{{{letter}}}")
    return template


class Recorder:
    """A client that notes, per (method, route template), every status it was answered."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.seen: set[tuple[str, str, int]] = set()

    async def __call__(self, method: str, template: str, expect: int, *, auth: bool = True,
                       headers: dict[str, str] | None = None, **values: Any) -> httpx.Response:
        params = values.pop("params", None)
        content = values.pop("content", None)
        json_body = values.pop("json", None)
        files = values.pop("files", None)
        sent = dict(headers or {})
        if auth:
            sent.setdefault("Authorization", f"Bearer {API_KEY}")
        response = await self.client.request(method, template.format(**values), params=params,
                                             content=content, json=json_body, files=files, headers=sent)
        assert response.status_code == expect, (method, template, response.status_code, response.text)
        if expect >= 400:
            assert_error_shape(response, expect)
        self.seen.add((method, template, expect))
        return response


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[Recorder, WorkContext, str]]:
    simulator = create_simulator_app(SimulatorConfig(latency_s=(0.2, 0.5), seed=3))
    async with serve(simulator) as provider_url:
        sock = bind_loopback()
        settings = Settings.from_env(fluxhook_env(
            tmp_path / "data", url_of(sock), provider_url, FLUXHOOK_API_KEY=API_KEY,
            FLUXHOOK_TICK_TOKEN=TICK_TOKEN, FLUXHOOK_TICK_SECONDS="1", FLUXHOOK_MAX_BODY_BYTES="4096",
            FLUXHOOK_CALLBACK_MAX_BYTES="4096", FLUXHOOK_UPLOAD_MAX_BYTES="20000"))
        app = create_app(settings)
        async with serve(app, sock) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
            yield Recorder(client), app.state.ctx, provider_url


@pytest.mark.e2e
@pytest.mark.usefixtures("e2e_backend")
async def test_every_status_the_document_names_is_reached_by_a_real_request(live):
    call, ctx, provider_url = live
    doc = (await call("GET", "/openapi.json", 200, auth=False)).json()
    validate(doc)
    await call("GET", "/healthz", 200, auth=False)
    await call("GET", "/metrics", 200)
    await call("GET", "/metrics", 401, auth=False)

    # Subscriptions first, so the jobs below have deliveries.
    sub = (await call("POST", "/v1/subscriptions", 201,
                      json={"url": "https://receiver.example.com/hook"})).json()
    sid = sub["id"]
    await call("POST", "/v1/subscriptions", 400, content=b"{")
    await call("POST", "/v1/subscriptions", 413, content=b"[" + b" " * 5000 + b"]")
    await call("POST", "/v1/subscriptions", 422, json={"url": "https://x.example.com", "nope": 1})
    await call("POST", "/v1/subscriptions", 401, auth=False, json={"url": "https://x.example.com"})
    await call("GET", "/v1/subscriptions", 200)
    await call("GET", "/v1/subscriptions", 422, params={"stauts": "x"})
    await call("GET", "/v1/subscriptions/{s}", 200, s=sid)
    await call("GET", "/v1/subscriptions/{s}", 404, s="sub_missing")
    await call("PATCH", "/v1/subscriptions/{s}", 200, s=sid, json={"description": "hooks"})
    await call("PATCH", "/v1/subscriptions/{s}", 400, s=sid, content=b"nope")
    await call("PATCH", "/v1/subscriptions/{s}", 404, s="sub_missing", json={})
    await call("PATCH", "/v1/subscriptions/{s}", 413, s=sid, content=b" " * 5000)
    await call("PATCH", "/v1/subscriptions/{s}", 422, s=sid, json={"status": "paused"})
    await call("POST", "/v1/subscriptions/{s}/rotate-secret", 200, s=sid)
    await call("POST", "/v1/subscriptions/{s}/rotate-secret", 404, s="sub_missing")
    await call("GET", "/v1/subscriptions/{s}/deliveries", 404, s="sub_missing")
    await call("GET", "/v1/subscriptions/{s}/deliveries", 422, s=sid, params={"limit": "1"})
    await call("POST", "/v1/subscriptions/{s}/recover", 422, s=sid)
    await call("POST", "/v1/subscriptions/{s}/recover", 404, s="sub_missing",
               params={"since": "2026-01-01T00:00:00Z"})
    await call("GET", "/v1/webhook-secret", 200)
    await call("GET", "/v1/models", 200)
    await call("GET", "/v1/models", 422, params={"x": "1"})

    # A job run to the end.
    body = job_body(1)
    job = (await call("POST", "/v1/jobs", 202, json=body, headers={"Idempotency-Key": "k1"})).json()
    jid = job["id"]
    await call("POST", "/v1/jobs", 409, json=job_body(2), headers={"Idempotency-Key": "k1"})
    await call("POST", "/v1/jobs", 400, content=b"{")
    await call("POST", "/v1/jobs", 413, content=b" " * 5000)
    await call("POST", "/v1/jobs", 422, json={**body, "input": {"prompt": "x", "width": 7}})
    await call("POST", "/v1/jobs", 401, auth=False, json=body)
    async with httpx.AsyncClient(base_url=str(call.client.base_url), timeout=30,
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as authed:
        docs = await wait_terminal(authed, [jid], timeout=60)
    assert docs[jid]["status"] == "succeeded"
    await call("GET", "/v1/jobs", 200, params={"status": "succeeded"})
    await call("GET", "/v1/jobs", 422, params={"stauts": "failed"})
    await call("GET", "/v1/jobs", 400, params={"cursor": "not-ours"})
    await call("GET", "/v1/jobs", 401, auth=False)
    await call("GET", "/v1/jobs/{j}", 200, j=jid)
    await call("GET", "/v1/jobs/{j}", 404, j="job_missing")
    await call("GET", "/v1/jobs/{j}", 422, j=jid, params={"wait": "soon"})
    etag = (await call("GET", "/v1/jobs/{j}/outputs/{i}", 200, j=jid, i=0)).headers["etag"]
    await call("GET", "/v1/jobs/{j}/outputs/{i}", 304, j=jid, i=0, headers={"If-None-Match": etag})
    await call("GET", "/v1/jobs/{j}/outputs/{i}", 404, j=jid, i=9)
    await call("GET", "/v1/jobs/{j}/outputs/{i}", 422, j=jid, i="first")
    await call("POST", "/v1/jobs/{j}/cancel", 409, j=jid)
    await call("POST", "/v1/jobs/{j}/cancel", 404, j="job_missing")
    deliveries = (await call("GET", "/v1/jobs/{j}/deliveries", 200, j=jid)).json()["data"]
    await call("GET", "/v1/jobs/{j}/deliveries", 404, j="job_missing")
    await call("GET", "/v1/jobs/{j}/deliveries", 422, j=jid, params={"x": "1"})
    await call("GET", "/v1/subscriptions/{s}/deliveries", 200, s=sid)
    await call("POST", "/v1/subscriptions/{s}/recover", 202, s=sid, params={"since": "2026-01-01T00:00:00Z"})
    assert deliveries, "the subscription made deliveries"
    await call("POST", "/v1/deliveries/{d}/redeliver", 202, d=deliveries[0]["id"])
    await call("POST", "/v1/deliveries/{d}/redeliver", 404, d="dlv_missing")
    await call("DELETE", "/v1/jobs/{j}", 200, j=jid)
    await call("DELETE", "/v1/jobs/{j}", 404, j="job_missing")
    await call("GET", "/v1/jobs/{j}/outputs/{i}", 410, j=jid, i=0)

    # A job the provider never finishes: not final, so it cannot be deleted; it can be cancelled.
    async with httpx.AsyncClient() as sim:
        (await sim.patch(f"{provider_url}/_sim/config", json={"latency_s": [600, 600]})).raise_for_status()
    slow = (await call("POST", "/v1/jobs", 202, json=job_body(3))).json()["id"]
    await call("DELETE", "/v1/jobs/{j}", 409, j=slow)
    await call("POST", "/v1/jobs/{j}/cancel", 200, j=slow)

    # Callbacks: the token first, then the signature over the raw body.
    token = ctx.tokens.issue("bfl", jid)
    task = docs[jid]["provider_job_id"]
    callback = b'{"id": "%s", "status": "Ready", "result": {}}' % task.encode()
    await call("POST", "/v1/callbacks/{p}/{t}", 200, auth=False, p="bfl", t=token, content=callback)
    await call("POST", "/v1/callbacks/{p}/{t}", 401, auth=False, p="bfl", t=token, content=callback,
               headers={"X-BFL-Signature": "sha256=" + "0" * 64})
    await call("POST", "/v1/callbacks/{p}/{t}", 400, auth=False, p="bfl", t=token, content=b"[1")
    await call("POST", "/v1/callbacks/{p}/{t}", 403, auth=False, p="bfl", t="forged", content=callback)
    await call("POST", "/v1/callbacks/{p}/{t}", 404, auth=False, p="runcomfy",
               t=ctx.tokens.issue("runcomfy", jid), content=callback)
    await call("POST", "/v1/callbacks/{p}/{t}", 413, auth=False, p="bfl", t=token, content=b" " * 5000)

    # Uploads, and the signed URL providers fetch them from.
    upload = (await call("POST", "/v1/uploads", 201, content=png(),
                         headers={"Content-Type": "image/png"})).json()
    await call("POST", "/v1/uploads", 400, content=b"--x\r\n",
               headers={"Content-Type": "multipart/form-data; boundary=y"})
    await call("POST", "/v1/uploads", 413, content=png(400), headers={"Content-Type": "image/png"})
    await call("POST", "/v1/uploads", 422, content=b"not an image", headers={"Content-Type": "image/png"})
    await call("POST", "/v1/uploads", 401, auth=False, content=png())
    upload_token = upload["url"].rsplit("/", 1)[1]
    got = await call("GET", "/uploads/{t}", 200, auth=False, t=upload_token)
    await call("GET", "/uploads/{t}", 304, auth=False, t=upload_token,
               headers={"If-None-Match": got.headers["etag"]})
    await call("GET", "/uploads/{t}", 404, auth=False, t="up1.forged")
    await call("GET", "/uploads/{t}", 410, auth=False,
               t=expired_upload_token(ctx.settings.secret_key, upload["id"]))

    # The tick has its own credential.
    for method in ("GET", "POST"):
        await call(method, "/v1/tick", 200, auth=False, headers={"Authorization": f"Bearer {TICK_TOKEN}"})
        await call(method, "/v1/tick", 401)
        await call(method, "/v1/tick", 422, auth=False, params={"seconds": "forever"},
                   headers={"Authorization": f"Bearer {TICK_TOKEN}"})

    # The event stream: its first bytes, then away; and a refused filter.
    async with call.client.stream("GET", "/v1/events", params={"last_event_id": "0"},
                                  headers={"Authorization": f"Bearer {API_KEY}"}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        with anyio.fail_after(10):
            async for line in stream.aiter_lines():
                if line.startswith("id: "):
                    break
    call.seen.add(("GET", "/v1/events", 200))
    await call("GET", "/v1/events", 422, params={"type": "job.exploded"})
    await call("GET", "/v1/events", 401, auth=False)
    await call("DELETE", "/v1/subscriptions/{s}", 204, s=sid)
    await call("DELETE", "/v1/subscriptions/{s}", 404, s=sid)

    # Without the API key, every guarded operation is a 401 before its handler runs.
    guarded = [(m, p) for m, p, status in documented(doc) if status == 401 and not p.startswith(
        ("/v1/tick", "/v1/callbacks/"))]
    for method, path in guarded:
        await call(method, short(path), 401, auth=False, j="x", s="x", d="x", i="0")

    # Every documented status was reached: /healthz's 503 by the test above it.
    templates = {(m, short(p), s) for m, p, s in documented(doc)}
    assert templates - {("GET", "/healthz", 503)} - call.seen == set()
