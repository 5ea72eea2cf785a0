"""Through the API: every class of hostile JSON value is a 400 or 422 in the one shape naming
the field, before anything is written and before any provider is called; stored rows that break
the rules are repaired by the migration."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from service.app import create_app
from service.catalog.validation import allows_null
from service.ids import new_job_id, new_webhook_secret
from service.rules import JOB_RULES
from service.settings import Settings
from service.strict_json import JsonRefused
from service.worker import Worker
from storage.records import NewJob
from storage.sqlite.database import Database, _statements
from storage.sqlite.migrations import MIGRATIONS, repair_stored_json
from tests.conftest import Api, assert_error_shape
from tests.test_catalog import SERVED, minimal_input

pytestmark = pytest.mark.anyio

BASE = "https://api.bfl.ai"
ALL_PROVIDERS = {"COMETAPI_API_KEY": "c", "APIFRAME_API_KEY": "afk_x", "RUNCOMFY_API_TOKEN": "r",
                 "REPLICATE_API_TOKEN": "r8", "FAL_KEY": "f"}
HOOK = "https://hooks.example.org/fluxhook"


@pytest.fixture
def router() -> respx.Router:
    router = respx.Router(assert_all_mocked=True)
    router.post(f"{BASE}/v1/flux-pro-1.1").mock(return_value=httpx.Response(
        200, json={"id": "task-1", "polling_url": f"{BASE}/v1/get_result?id=task-1"}))
    return router


@pytest.fixture
def transport(router: respx.Router) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(router.async_handler)


@pytest.fixture
def make_settings(make_settings):
    return lambda **extra: make_settings(**{**ALL_PROVIDERS, **extra})


def row_counts(db_path: Path) -> dict[str, int]:
    """Rows in every table, read with a connection of its own."""
    with sqlite3.connect(db_path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}  # noqa: S608


def raw_post(api: Api, path: str, text: str | bytes, **headers: str) -> Any:
    body = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return api.client.post(path, content=body, headers={"Content-Type": "application/json", **headers})


JOB = '{"provider": "bfl", "model": "flux-pro-1.1", "input": %s, "metadata": %s}'
PROMPT = '{"prompt": "a fox"}'

# (case, body, status, field)
JOB_CASES = [
    ("nan-in-metadata", JOB % (PROMPT, '{"a": {"b": NaN}}'), 400, "metadata.a.b"),
    ("infinity-in-input", JOB % ('{"prompt": "a fox", "guidance": Infinity}', "{}"), 400, "input.guidance"),
    ("minus-infinity", JOB % (PROMPT, '{"x": -Infinity}'), 400, "metadata.x"),
    ("1e400", JOB % ('{"prompt": "a fox", "width": 1e400}', "{}"), 422, "input.width"),
    ("5000-digit-int", JOB % ('{"prompt": "a fox", "seed": ' + "7" * 5000 + "}", "{}"), 422, "input.seed"),
    ("lone-surrogate-in-prompt", JOB % ('{"prompt": "a \\ud800 fox"}', "{}"), 422, "input.prompt"),
    ("lone-surrogate-in-key", JOB % (PROMPT, '{"\\udc01": 1}'), 422, "metadata.\\udc01"),
    ("duplicate-key", JOB % ('{"prompt": "a", "prompt": "b"}', "{}"), 422, "input.prompt"),
    ("nul-in-prompt", JOB % ('{"prompt": "a \\u0000 fox"}', "{}"), 422, "input.prompt"),
    ("nul-in-key", JOB % (PROMPT, '{"a\\u0000": 1}'), 422, "metadata.a\x00"),
    ("deep-nesting", JOB % (PROMPT, '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"), 400, "(body)"),
    ("nan-at-top", "NaN", 400, "(body)"),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), JOB_CASES, ids=[c[0] for c in JOB_CASES])
async def test_hostile_job_body_is_refused_naming_the_field_and_nothing_is_written_or_sent(
    api, router, case, body, status, field
):
    before = row_counts(api.ctx.settings.db_path)
    response = await raw_post(api, "/v1/jobs", body, **{"Idempotency-Key": f"k-{case}"})
    error = assert_error_shape(response, status)
    assert field in [d["field"] for d in error["details"]]
    await Worker(api.ctx).run_once()
    assert router.calls.call_count == 0
    assert row_counts(api.ctx.settings.db_path) == before
    assert (await api.client.get("/v1/jobs")).json()["data"] == []


def with_url(members: str) -> str:
    """A subscription body: a good URL, then `members` as JSON text."""
    return '{"url": "' + HOOK + '", ' + members + "}"


SUBSCRIPTION_CASES = [
    ("nan-description", with_url('"description": NaN'), 400, "description"),
    ("lone-surrogate-description", with_url('"description": "\\ud800"'), 422, "description"),
    ("lone-surrogate-url", '{"url": "https://hooks.example.org/\\udfff"}', 422, "url"),
    ("lone-surrogate-event", with_url('"events": ["\\ud800"]'), 422, "events[0]"),
    ("surrogate-key", with_url('"\\ud800": 1'), 422, "\\ud800"),
    ("nul-description", with_url('"description": "a\\u0000"'), 422, "description"),
    ("nul-url", '{"url": "https://hooks.example.org/\\u0000"}', 422, "url"),
    ("huge-int", with_url('"description": ' + "1" * 5000), 422, "description"),
    ("1e400", with_url('"description": 1e400'), 422, "description"),
    ("deep", with_url('"x": ' + "{" * 50_000), 400, "(body)"),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), SUBSCRIPTION_CASES,
                         ids=[c[0] for c in SUBSCRIPTION_CASES])
async def test_hostile_subscription_bodies_are_refused_and_write_nothing(api, case, body, status, field):
    created = await api.client.post("/v1/subscriptions", json={"url": HOOK})
    assert created.status_code == 201, created.text
    sub_id = created.json()["id"]
    before = row_counts(api.ctx.settings.db_path)
    error = assert_error_shape(await raw_post(api, "/v1/subscriptions", body), status)
    assert field in [d["field"] for d in error["details"]]
    response = await api.client.patch(
        f"/v1/subscriptions/{sub_id}", content=body.encode("utf-8", "surrogatepass"),
        headers={"Content-Type": "application/json"})
    error = assert_error_shape(response, status)
    assert field in [d["field"] for d in error["details"]]
    assert row_counts(api.ctx.settings.db_path) == before
    assert (await api.client.get(f"/v1/subscriptions/{sub_id}")).json() == {
        k: v for k, v in created.json().items() if k != "secret"}


CALLBACK_CASES = [
    ("nan", '{"id": "task-1", "status": "Ready", "progress": NaN}', "progress"),
    ("infinity", '{"id": "task-1", "status": "Ready", "progress": Infinity}', "progress"),
    ("1e400", '{"id": "task-1", "status": "Ready", "progress": 1e400}', "progress"),
    ("lone-surrogate", '{"id": "task-1", "status": "Ready", "result": {"sample": "https://x/\\ud800"}}',
     "result.sample"),
    ("surrogate-key", '{"id": "task-1", "\\ud800": "Ready"}', "\\ud800"),
    ("huge-int", '{"id": ' + "9" * 5000 + ', "status": "Ready"}', "id"),
    ("deep", '{"id": "task-1", "x": ' + "[" * 100_000 + "}", "(body)"),
]


@pytest.mark.parametrize(("case", "body", "field"), CALLBACK_CASES, ids=[c[0] for c in CALLBACK_CASES])
@pytest.mark.parametrize("signature", ["signed", "unsigned"])
async def test_hostile_callback_is_a_400_that_records_nothing(api, router, case, body, field, signature):
    submitted = await api.client.post("/v1/jobs", json={
        "provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "fox"}})
    assert submitted.status_code == 202, submitted.text
    await Worker(api.ctx).run_once()
    job = await api.ctx.store.jobs.get_job(submitted.json()["id"])
    path = f"/v1/callbacks/bfl/{api.ctx.tokens.issue('bfl', job.id)}"
    raw = body.encode("utf-8", "surrogatepass")
    headers = {"Content-Type": "application/json"}
    if signature == "signed":
        digest = hmac.new(job.webhook_secret.encode(), raw, hashlib.sha256).hexdigest()
        headers["X-BFL-Signature"] = f"sha256={digest}"
    before = row_counts(api.ctx.settings.db_path)
    response = await api.client.post(path, content=raw, headers=headers)
    error = assert_error_shape(response, 400, "malformed_callback")
    assert field in [d["field"] for d in error["details"]]
    assert row_counts(api.ctx.settings.db_path) == before
    after = await api.ctx.store.jobs.get_job(job.id)
    assert (after.state, after.callback_count) == (job.state, job.callback_count)


@pytest.mark.parametrize(("query", "status", "field"), [
    ("cursor=OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OmpvYl8x", 400, "cursor"),  # 30-digit created_at
    ("cursor=OTIyMzM3MjAzNjg1NDc3NTgwODpqb2JfMQ", 400, "cursor"),  # 2**63: one past SQLite's range
    ("cursor=%ED%A0%80", 400, "cursor"),  # a UTF-8-encoded lone surrogate
    ("limit=" + "9" * 5000, 422, "limit"),
    ("limit=NaN", 422, "limit"),
    ("limit=1e400", 422, "limit"),
    ("limit=%ED%A0%80", 422, "limit"),
    ("status=%ED%A0%80", 422, "status"),
])
async def test_hostile_list_query_is_refused_in_the_one_shape(api, query, status, field):
    error = assert_error_shape(await api.client.get(f"/v1/jobs?{query}"), status)
    assert [d["field"] for d in error["details"]] == [field]


@pytest.mark.parametrize(("path", "status", "field"), [
    ("/v1/jobs/job_1?wait=NaN", 422, "wait"),
    ("/v1/jobs/job_1?wait=Infinity", 422, "wait"),
    ("/v1/jobs/job_1?wait=1e400", 422, "wait"),
    ("/v1/jobs/job_1?wait=1_0", 422, "wait"),
    ("/v1/jobs/job_1?wait=" + "1" * 5000, 422, "wait"),
    ("/v1/events?last_event_id=" + "9" * 5000, 422, "Last-Event-ID"),
    ("/v1/events?type=%ED%A0%80", 422, "type"),
    ("/v1/subscriptions/sub_1/recover?since=%ED%A0%80", 422, "since"),
    ("/v1/jobs/%ED%A0%80", 404, "job_id"),
    # PostgreSQL's text cannot hold NUL: such an id is a 404 before any read, on both backends
    ("/v1/jobs/job_%00x", 404, "(path)"),
    ("/v1/jobs/job_%00x/deliveries", 404, "(path)"),
    ("/v1/subscriptions/sub_%00x/recover", 404, "(path)"),
    ("/v1/jobs/job_1/outputs/" + "9" * 5000, 422, "index"),
])
async def test_hostile_query_and_path_values_are_refused_in_the_one_shape(api, path, status, field):
    method = "POST" if path.startswith("/v1/subscriptions") else "GET"
    error = assert_error_shape(await api.client.request(method, path), status)
    assert field in [d["field"] for d in error["details"]]


async def test_a_hostile_last_event_id_header_is_refused(api):
    for value in ("9" * 5000, "NaN", "-1", "1e3"):
        error = assert_error_shape(await api.client.get("/v1/events", headers={"Last-Event-ID": value}), 422)
        assert error["details"][0]["field"] == "Last-Event-ID"


# null: accepted only where the published schema allows it ---------------------------------------

NULL_CASES = [
    (provider, model, name)
    for provider, model in SERVED
    for name, spec in model.schema()["properties"].items()
    if not allows_null(spec)
]


@pytest.mark.parametrize(("provider", "model", "name"), NULL_CASES,
                         ids=[f"{p}/{m.name}/{n}" for p, m, n in NULL_CASES])
async def test_null_where_the_schema_refuses_it_is_a_422_naming_the_field(api, router, provider, model, name):
    value = {**minimal_input(model), name: None}
    response = await api.client.post(
        "/v1/jobs", json={"provider": provider, "model": model.native_id, "input": value})
    error = assert_error_shape(response, 422, "validation_failed")
    assert [d["field"] for d in error["details"]] == [f"input.{name}"]
    await Worker(api.ctx).run_once()
    assert router.calls.call_count == 0


def test_every_field_named_in_the_issue_is_covered_where_a_model_has_it():
    named = {"width", "height", "safety_tolerance", "prompt_upsampling", "raw", "image_prompt_strength",
             "aspect_ratio"}
    covered = {name for _, _, name in NULL_CASES}
    assert named <= covered


async def test_published_schemas_and_validation_agree_on_null(api):
    body = (await api.client.get("/v1/models")).json()
    published = {(p["name"], m["name"]): m["parameters"]["properties"]
                 for p in body["providers"] for m in p["models"]}
    for provider, model, name in NULL_CASES:
        assert not allows_null(published[(provider, model.name)][name])


# Stored rows that break the rules: the migration repairs them ----------------------------------


@asynccontextmanager
async def running(settings: Settings, transport: httpx.AsyncBaseTransport, clock: Any) -> AsyncIterator[Api]:
    app = create_app(settings, transport=transport, clock=clock, rand=random.Random(7), run_workers=False)
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state),
                                     base_url="https://hooks.example.com") as client:
            yield Api(client, app.state.ctx)


@pytest.mark.sqlite_only  # the repair is of rows an older SQLite schema stored
async def test_migration_repairs_stored_rows_that_break_the_rules(
    make_settings: Callable[..., Settings], clock, transport
):
    settings = make_settings()
    settings.db_path.parent.mkdir(parents=True, exist_ok=True)
    job_id = new_job_id(clock())
    # A database as the release before the repair left it, holding what it let through.
    number = MIGRATIONS.index(repair_stored_json) + 1
    with sqlite3.connect(settings.db_path) as conn:
        for step in MIGRATIONS[: number - 1]:
            assert isinstance(step, str)
            for statement in _statements(step):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number - 1}")
        conn.execute(
            """INSERT INTO jobs (id, provider, model, status, input, metadata, webhook_secret,
                                 created_at, updated_at, deadline_at)
               VALUES (?, 'bfl', 'flux-pro-1.1', 'queued', ?, ?, ?, ?, ?, ?)""",
            (job_id, '{"prompt":"a \\ud800 fox"}', '{"a":NaN,"b":[Infinity,-Infinity],"\\udc00":1e400}',
             new_webhook_secret(), clock(), clock(), clock() + 900_000))
        conn.execute(
            "INSERT INTO events (id, job_id, job_seq, type, body, created_at) VALUES (?, ?, 1, ?, ?, ?)",
            ("evt_1", job_id, "job.submitted", b'{"data":{"metadata":{"a":NaN}}}', clock()))
        conn.execute(
            """INSERT INTO subscriptions (id, url, events, secret, status, created_at, updated_at)
               VALUES ('sub_1', ?, '["job.failed","\\ud800"]', 'whsec_x', 'enabled', 0, 0)""", (HOOK,))

    async with running(settings, transport, clock) as api:
        response = await api.client.get("/v1/jobs")
        assert response.status_code == 200, response.text
        [job] = response.json()["data"]
        assert job["input"] == {"prompt": "a \ufffd fox"}
        assert job["metadata"] == {"a": None, "b": [None, None], "\ufffd": None}
        [sub] = (await api.client.get("/v1/subscriptions")).json()["data"]
        assert sub["events"] == ["job.failed", "\ufffd"]
    with sqlite3.connect(settings.db_path) as conn:
        [(body,)] = conn.execute("SELECT body FROM events WHERE id = 'evt_1'").fetchall()
        assert json.loads(body) == {"data": {"metadata": {"a": None}}}
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_before_the_repair_such_a_row_is_what_made_listing_fail(make_settings, clock):
    """The known answer the migration exists for: the strict reader refuses the stored NaN."""
    settings = make_settings()
    store = await Database.open(settings.db_path, rules=JOB_RULES)
    job_id = new_job_id(clock())
    await store.jobs.create_job(NewJob(
        id=job_id, provider="bfl", model="flux-pro-1.1", input={"prompt": "fox"}, metadata={},
        webhook_secret=new_webhook_secret(), idempotency_key=None, request_hash=None,
        deadline_at=clock() + 900_000), now=clock())
    with sqlite3.connect(settings.db_path) as conn:
        conn.execute("UPDATE jobs SET metadata = '{\"a\":NaN}' WHERE id = ?", (job_id,))
    with pytest.raises(JsonRefused):
        await store.jobs.get_job(job_id)
    await store.close()


async def test_the_store_refuses_a_value_that_would_not_read_back_and_writes_nothing(ctx, clock):
    before = row_counts(ctx.settings.db_path)
    with pytest.raises(JsonRefused) as caught:
        await ctx.store.jobs.create_job(NewJob(
            id=new_job_id(clock()), provider="bfl", model="flux-pro-1.1", input={"prompt": "fox"},
            metadata={"score": float("nan")}, webhook_secret=new_webhook_secret(), idempotency_key=None,
            request_hash=None, deadline_at=clock() + 900_000), now=clock())
    assert caught.value.path == "metadata.score"
    assert row_counts(ctx.settings.db_path) == before
