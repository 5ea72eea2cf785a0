"""Every query the workers, the callback endpoint and the event stream run reads an index range:
none walks the whole of `jobs`, `tasks`, `events` or `deliveries`, so their cost does not grow
with the number of jobs in flight (issue 10; bench/idle.py measures it).

The SQL is recorded as a real round runs it (submit, callback, download, notification, event
stream, the loops' looks for what is due next, a tick's counts), then SQLite's EXPLAIN QUERY
PLAN is asked for each statement with its own parameters. Without ANALYZE statistics (fluxhook
never runs it) SQLite plans from the schema alone, so the plans are those of a large database.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import random
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import respx
from PIL import Image

from service.app import create_app
from service.callbacks import apply_all
from service.notifier import Notifier
from service.settings import Settings
from service.tick import tick
from service.worker import Worker

pytestmark = [pytest.mark.anyio, pytest.mark.sqlite_only]

BASE = "https://api.bfl.ai"
IMAGE_URL = "https://delivery.eu2.bfl.ai/results/abc/sample.jpeg"
HOOK_URL = "https://receiver.example.com/hook"
WATCHED = ("jobs", "tasks", "events", "deliveries")
# Small tables a query may read whole: `subscriptions` holds the operator's few webhook
# destinations (every event is fanned out to the enabled ones), not per-job rows.
SMALL = ("subscriptions",)


class Recording:
    """A sqlite3 connection that keeps each statement run through it, with its parameters."""

    def __init__(self, conn: sqlite3.Connection, log: list[tuple[str, Any]]) -> None:
        self._conn, self._log = conn, log

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self._log.append((sql, params))
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        rows = list(rows)
        if rows:
            self._log.append((sql, rows[0]))
        return self._conn.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@contextmanager
def recorded(database: Any) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the database's stores run meanwhile."""
    log: list[tuple[str, Any]] = []
    run = database._run

    async def recording_run(fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await run(lambda conn: fn(Recording(conn, log)))

    database._run = recording_run
    try:
        yield log
    finally:
        del database._run


def full_walks(conn: sqlite3.Connection, sql: str, params: Any) -> list[str]:
    """The plan lines of `sql` that read a watched table whole: a SCAN, or a SEARCH of a
    (partial) index with no range on it, which SQLite also reports as SEARCH."""
    names = {table: table for table in WATCHED}
    for table, alias in re.findall(r"\b(?:FROM|JOIN|UPDATE)\s+(\w+)(?:\s+(?:AS\s+)?(\w+))?", sql, re.I):
        if table in WATCHED and alias and alias.upper() not in ("WHERE", "SET", "ON", "JOIN", "LEFT"):
            names[alias] = table
    plan = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    walks = []
    for row in plan:
        detail = row[3]
        found = re.match(r"(SCAN|SEARCH) (\w+)(.*)", detail)
        if found is None or found[2] not in names or found[2] in SMALL:
            continue
        if found[1] == "SCAN" or ("INDEX" in found[3] and "(" not in found[3]):
            walks.append(f"{detail} (table {names[found[2]]})")
    return walks


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 32), (200, 40, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def providers() -> respx.Router:
    router = respx.Router(assert_all_mocked=True)
    router.post(f"{BASE}/v1/flux-pro-1.1").mock(side_effect=lambda request: httpx.Response(
        200, json={"id": f"task-{json.loads(request.content)['prompt']}",
                   "polling_url": f"{BASE}/v1/get_result?id=task-{json.loads(request.content)['prompt']}"}))
    router.get(f"{BASE}/v1/get_result").mock(return_value=httpx.Response(200, json={"status": "Pending"}))
    router.get(IMAGE_URL).mock(return_value=httpx.Response(
        200, content=jpeg_bytes(), headers={"content-type": "image/jpeg"}))
    return router


@pytest.fixture
async def app(
    make_settings: Callable[..., Settings], clock: Any, providers: respx.Router
) -> AsyncIterator[Any]:
    receiver = httpx.MockTransport(lambda request: httpx.Response(204))
    built = create_app(make_settings(), transport=httpx.MockTransport(providers.async_handler),
                       notify_transport=receiver, clock=clock, rand=random.Random(7), run_workers=False,
                       apply_callbacks=False)
    async with built.router.lifespan_context(built) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await built(scope, receive, send)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state),
                                     base_url="https://hooks.example.com") as client:
            yield client, built.state.ctx


async def test_no_query_of_the_workers_callbacks_or_event_stream_walks_a_whole_table(app, clock):
    from handlers.events import _events

    client, ctx = app
    subscribed = await client.post("/v1/subscriptions", json={"url": HOOK_URL, "events": ["job.succeeded"]})
    assert subscribed.status_code == 201, subscribed.text
    job = (await client.post("/v1/jobs", json={
        "provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "fox", "width": 512, "height": 512},
        "webhook_url": HOOK_URL})).json()
    worker, notifier = Worker(ctx), Notifier(ctx)
    secret = (await ctx.store.jobs.get_job(job["id"])).webhook_secret
    body = json.dumps({"id": "task-fox", "status": "Ready", "result": {"sample": IMAGE_URL}}).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    path = f"/v1/callbacks/bfl/{ctx.tokens.issue('bfl', job['id'])}"

    with recorded(ctx.store) as statements:
        assert await worker.run_once() == 1  # the submit
        await worker.next_due()
        clock.advance(60)
        await worker.run_once()  # a fallback poll
        answered = await client.post(path, content=body, headers={
            "X-BFL-Signature": f"sha256={signature}", "Content-Type": "application/json"})
        assert answered.status_code == 200, answered.text
        assert await apply_all(ctx) == 1  # the callback, from the inbox
        await worker.drain()  # the download
        await worker.next_due()
        await notifier.drain()  # job.succeeded to the job's URL and the subscription
        await notifier.next_due()
        after = await ctx.store.events.latest_event_seq()
        for job_id, types in ((None, ()), (job["id"], ()), (None, ("job.succeeded",)),
                              (job["id"], ("job.running", "job.succeeded"))):
            stream = _events(ctx, after=0, job_id=job_id, types=types)
            assert await anext(stream) == "retry: 1000\n\n"
            assert "id: " in await anext(stream)
            await stream.aclose()
        await ctx.store.events.list_events(after=after, job_id=job["id"], types=("job.failed",))
        clock.advance(3600)
        await tick(ctx, seconds=5)

    assert (await ctx.store.jobs.get_job(job["id"])).state.status == "succeeded"
    run = {sql for sql, _ in statements}
    # Every path this test means to cover did run.
    for fragment in ("UPDATE tasks SET lease_until", "INSERT INTO callbacks", "DELETE FROM inbox",
                     "INSERT INTO outputs",
                     "FROM deliveries d JOIN events e", "FROM events WHERE seq > ?", "FROM tasks"):
        assert any(fragment in sql for sql in run), fragment
    walks: dict[str, list[str]] = {}
    with sqlite3.connect(ctx.settings.db_path) as conn:
        for sql, params in statements:
            if sql.split()[0].upper() in ("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA", "SAVEPOINT", "RELEASE"):
                continue
            if found := full_walks(conn, sql, params):
                walks[" ".join(sql.split())] = found
    assert walks == {}, json.dumps(walks, indent=1)
