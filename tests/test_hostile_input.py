"""Property: whatever hostile JSON body, query string, header or path value reaches any route, the
answer is never a 5xx, every error has the one shape, and a refused request writes no row.

Every route of the app is enumerated from `app.routes`; path parameters are filled with real
ids and tokens (a job, a subscription, a delivery, a callback token, an upload token) or with
generated text. The examples are derandomized, so CI sees the same ones on every run.
"""

from __future__ import annotations

import io
import json
import random
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
import respx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.routing import Route

from service.app import create_app
from service.callbacks import apply_all
from service.catalog.params import VOCABULARY
from service.context import WorkContext
from service.settings import Settings
from service.strict_json import DOCUMENT_DEPTH, JsonRefused, loads
from tests.conftest import BFL_TEST_ENV, START_MS, FakeClock, assert_error_shape

# Replicate's secret is set, so its callbacks are judged by signature, not by a fetch that every
# provider call's 503 here would refuse (a 503 the provider retries, by design).
ALL_PROVIDERS = {"COMETAPI_API_KEY": "c", "APIFRAME_API_KEY": "afk_x", "RUNCOMFY_API_TOKEN": "r",
                 "REPLICATE_API_TOKEN": "r8",
                 "REPLICATE_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
HOOK = "https://hooks.example.org/fluxhook"
EXAMPLES = 150

# JSON text --------------------------------------------------------------------------------------

HOSTILE_ATOMS = [
    "NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0", "0.0", "1E+2",
    "null", "true", "false", "0", "-1", "1.5", "2147483648", "18446744073709551616", "nan", "inf",
    '"\\ud800"', '"\\udfff"', '"a\\ud83d"', '"\\ude00\\ud83d"', '"\\ud83d\\ude00"', '"\\u0000"',
    '""', '"x"', '"\\u00e9"', '"job.succeeded"', '"auto"', '"bfl"', '"flux-pro-1.1"', f'"{HOOK}"',
    '"https://"', '"enabled"', '"disabled"', "[]", "{}",
]
KEYS = [
    "provider", "model", "input", "metadata", "webhook_url", "webhook_events", "url", "events",
    "description", "status", "id", "result", "sample", "progress", "task_id", "data", "",
    "\\ud800", "\\udc00x", "__proto__", "a.b", "[0]", *VOCABULARY,
]

# Every character, lone surrogates included, as JSON escapes (json.dumps writes them as \\udXXX).
any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=12)
json_string = st.one_of(any_text.map(json.dumps), st.sampled_from([a for a in HOSTILE_ATOMS if a[0] == '"']))
atom = st.one_of(
    st.sampled_from(HOSTILE_ATOMS),
    json_string,
    st.integers(min_value=19, max_value=6000).map(lambda n: "9" * n),  # ints too long to convert
    st.integers(min_value=2, max_value=400).map(lambda n: f"1e{n}"),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
key = st.one_of(st.sampled_from(KEYS).map(lambda k: f'"{k}"'), json_string)


def _object(members: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in members) + "}"


json_text = st.recursive(
    atom,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(key, children), max_size=5).map(_object),
        # a repeated member name
        st.tuples(key, children, children).map(lambda t: _object([(t[0], t[1]), (t[0], t[2])])),
    ),
    max_leaves=12,
)
deep = st.one_of(
    st.integers(min_value=60, max_value=100_000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=60, max_value=100_000).map(lambda n: '{"a":' * n),
    st.integers(min_value=60, max_value=5_000).map(lambda n: '{"metadata":' + "[" * n + "]" * n + "}"),
)


def _job_body(parts: tuple[str, str, str, list[tuple[str, str]]]) -> str:
    provider, model, prompt, extra = parts
    input_members = [('"prompt"', prompt), *extra]
    return _object([('"provider"', provider), ('"model"', model), ('"input"', _object(input_members))])


# Bodies shaped like the real ones, so hostile values get past the first checks.
job_body = st.tuples(
    st.sampled_from(['"bfl"', '"auto"', '"cometapi"', '"apiframe"', '"runcomfy"', '"replicate"']),
    st.sampled_from(['"flux-pro-1.1"', '"flux-dev"', '"flux-kontext-pro"', '"flux-2-dev"']),
    st.one_of(json_string, atom),
    st.lists(st.tuples(st.sampled_from(VOCABULARY).map(lambda k: f'"{k}"'), json_text), max_size=3),
).map(_job_body)
subscription_body = st.lists(
    st.tuples(st.sampled_from(['"url"', '"events"', '"description"', '"status"']), json_text),
    max_size=4,
).map(lambda members: _object([('"url"', f'"{HOOK}"'), *members]))
bodies = st.one_of(
    json_text, job_body, subscription_body, deep, st.binary(max_size=40),
    json_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
)

# Query strings, headers and path values --------------------------------------------------------

RAW_ENCODED = {"%ED%A0%80", "%FF", "%00", "%C0%AF"}  # sent as they are: invalid UTF-8, NUL
HOSTILE_VALUES = [
    "NaN", "nan", "inf", "-inf", "Infinity", "1e400", "-1", "0", "1", "100", "101", "9" * 5000,
    "٣", "²", " 5", "1_0", "0x10", "", *sorted(RAW_ENCODED),
    "OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OmpvYl8x", "OTIyMzM3MjAzNjg1NDc3NTgwODpqb2JfMQ",
    "2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59-23:59", "job.succeeded", "job.succeeded,bogus", "succeeded", "queued",
]
QUERY_KEYS = ["cursor", "limit", "status", "wait", "since", "type", "job_id", "last_event_id", "seconds"]
TICK_TOKEN = "hostile-tick-token"


def _encode(value: str) -> str:
    if value in RAW_ENCODED:
        return value
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


query_value = st.one_of(st.sampled_from(HOSTILE_VALUES), any_text)
queries = st.lists(
    st.tuples(st.one_of(st.sampled_from(QUERY_KEYS), any_text), query_value), max_size=4,
).map(lambda pairs: "&".join(f"{_encode(k)}={_encode(v)}" for k, v in pairs))
header_value = st.one_of(
    st.sampled_from([v for v in HOSTILE_VALUES if len(v) < 200 and v.isascii()] + ["9" * 300, "x" * 256]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
)
headers = st.fixed_dictionaries({}, optional={
    "Idempotency-Key": header_value, "Last-Event-ID": header_value, "If-None-Match": header_value,
    # POST /v1/tick's credential, right or hostile, so its own checks see hostile queries too.
    "Authorization": st.one_of(st.just(f"Bearer {TICK_TOKEN}"), header_value.map(lambda v: f"Bearer {v}"),
                               header_value),
    "Content-Type": st.sampled_from(["application/json", "text/plain", "image/png",
                                     "multipart/form-data; boundary=x"]),
})


# The app, with real things for path parameters --------------------------------------------------


@dataclass
class Harness:
    portal: BlockingPortal
    client: httpx.AsyncClient
    ctx: WorkContext
    db_path: Path
    real: dict[str, list[str]]  # path parameter -> real values
    callback_targets: list[list[tuple[str, str]]]  # [("provider", p), ("token", t)] pairs

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> httpx.Response:
        return self.portal.call(lambda: self.client.request(method, url, content=body, headers=headers))

    def settle(self) -> None:
        """Apply every callback an earlier example recorded, so the background applier does not
        change the counts while a refused request is checked."""
        self.portal.call(apply_all, self.ctx)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "teal").save(buffer, "PNG")
    return buffer.getvalue()


def _disconnect_after_first_chunk(app: Any, state: dict[str, Any]) -> Any:
    """The app, with the client going away once a streamed answer has begun: the event stream
    never ends by itself, and only its first bytes matter here."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        scope["state"] = dict(state)
        begun = anyio.Event()
        body_read = False

        async def receive_once() -> Any:
            nonlocal body_read
            if body_read:
                await begun.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            body_read = message["type"] == "http.request" and not message.get("more_body")
            return message

        complete = False

        async def sending(message: Any) -> None:
            nonlocal complete
            await send(message)
            if message["type"] == "http.response.body":
                begun.set()
                complete = not message.get("more_body")

        await app(scope, receive_once, sending)
        if begun.is_set() and not complete:  # the stream stopped when the client left: end it
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return wrapped


@asynccontextmanager
async def running(data_dir: Path) -> AsyncIterator[tuple[httpx.AsyncClient, WorkContext]]:
    router = respx.Router(assert_all_mocked=False)
    router.route().mock(return_value=httpx.Response(503, json={"detail": "unavailable"}))
    app_settings = Settings.from_env({**BFL_TEST_ENV, **ALL_PROVIDERS, "FLUXHOOK_DATA_DIR": str(data_dir),
                                      "FLUXHOOK_TICK_TOKEN": TICK_TOKEN})
    # The tick sends due notifications: they get the same 503 as every provider call.
    app = create_app(app_settings, transport=httpx.MockTransport(router.async_handler),
                     notify_transport=httpx.MockTransport(router.async_handler),
                     clock=FakeClock(START_MS), rand=random.Random(7), run_workers=False)
    async with app.router.lifespan_context(app) as state:
        transport = httpx.ASGITransport(app=_disconnect_after_first_chunk(app, dict(state or {})))
        async with httpx.AsyncClient(transport=transport, base_url="https://hooks.example.com",
                                     timeout=30) as client:
            yield client, app.state.ctx


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with start_blocking_portal() as portal:
        manager = portal.wrap_async_context_manager(running(tmp_path_factory.mktemp("hostile") / "data"))
        with manager as (client, ctx):
            harness = Harness(portal, client, ctx, ctx.settings.db_path, {}, [])
            sub = harness.request("POST", "/v1/subscriptions", json.dumps({"url": HOOK}).encode(),
                                  {"Content-Type": "application/json"}).json()
            job = harness.request("POST", "/v1/jobs", json.dumps(
                {"provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "fox"}}).encode(),
                {"Content-Type": "application/json"}).json()
            # Cancelled, so it is final: a `?wait=` on it answers at once.
            assert harness.request("POST", f"/v1/jobs/{job['id']}/cancel", None, {}).status_code == 200
            [delivery] = harness.request("GET", f"/v1/subscriptions/{sub['id']}/deliveries", None,
                                         {}).json()["data"]
            upload = harness.request("POST", "/v1/uploads", _png(), {"Content-Type": "image/png"}).json()
            harness.real = {
                "job_id": [job["id"]],
                "subscription_id": [sub["id"]],
                "delivery_id": [delivery["id"]],
                "provider": ["bfl", "cometapi", "apiframe", "runcomfy", "replicate"],
                "token": [ctx.tokens.issue(p, job["id"]) for p in ("bfl", "cometapi", "apiframe")]
                + [upload["url"].rsplit("/", 1)[1]],
                "index": ["0"],
            }
            harness.callback_targets = [[("provider", p), ("token", ctx.tokens.issue(p, job["id"]))]
                                        for p in ("bfl", "cometapi", "apiframe", "runcomfy", "replicate")]
            yield harness


def row_counts(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}  # noqa: S608


def _app_routes() -> list[tuple[str, str, tuple[str, ...]]]:
    app = create_app(Settings.from_env({**BFL_TEST_ENV, "FLUXHOOK_DATA_DIR": "/nonexistent"}),
                     run_workers=False)
    found = []
    for route in app.routes:
        if isinstance(route, Route):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                found.append((method, route.path, tuple(route.param_convertors)))
    return found


# DELETE last: it removes the real subscription the other routes use.
ROUTES = sorted(_app_routes(), key=lambda r: r[0] == "DELETE")


def test_every_route_of_the_app_is_exercised():
    paths = {path for _, path, _ in ROUTES}
    assert {"/v1/jobs", "/v1/subscriptions/{subscription_id}", "/v1/callbacks/{provider}/{token}",
            "/v1/events", "/v1/deliveries/{delivery_id}/redeliver", "/v1/tick"} <= paths
    assert len(ROUTES) >= 20


@pytest.mark.parametrize(("method", "path", "params"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_hostile_input_never_gets_a_5xx_nor_writes_when_refused(harness, method, path, params):
    def path_value(name: str) -> st.SearchStrategy[str]:
        return st.one_of(st.sampled_from(harness.real.get(name) or ["x"]), any_text.filter(bool))

    values = st.fixed_dictionaries({name: path_value(name) for name in params})
    if "provider" in params and "token" in params:  # a real token only counts with its provider
        values = st.one_of(st.sampled_from(harness.callback_targets).map(dict), values)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(values=values, query=queries, body=bodies, extra=headers)
    def check(values: dict[str, str], query: str, body: str | bytes, extra: dict[str, str]) -> None:
        url = path
        for name, value in values.items():
            url = url.replace(f"{{{name}}}", quote(value.encode("utf-8", "surrogatepass"), safe=""))
        if query:
            url = f"{url}?{query}"
        raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        sent = raw if method in ("POST", "PATCH") else None
        harness.settle()
        before = row_counts(harness.db_path)
        response = harness.request(method, url, sent, {"Content-Type": "application/json", **extra})
        assert response.status_code < 500, (method, url, response.text[:500])
        if response.status_code >= 400:
            assert_error_shape(response, response.status_code)
            assert row_counts(harness.db_path) == before, (method, url, response.status_code)
        elif response.headers.get("content-type", "").startswith("application/json"):
            loads(response.content)  # whatever fluxhook answers reads back under the strict rules

    check()


def test_after_all_that_every_stored_document_still_reads_back(harness):
    """Run last in this module: nothing any example stored breaks listing or the event log."""
    cursor = None
    while True:
        query = f"?limit=100&cursor={cursor}" if cursor else "?limit=100"
        response = harness.request("GET", f"/v1/jobs{query}", None, {})
        assert response.status_code == 200, response.text[:500]
        page = loads(response.content)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    with sqlite3.connect(harness.db_path) as conn:
        for (body,) in conn.execute("SELECT body FROM events"):
            try:
                loads(body, max_depth=DOCUMENT_DEPTH)
            except JsonRefused as exc:  # pragma: no cover - the failure message is the point
                pytest.fail(f"a stored event does not read back: {exc}")
