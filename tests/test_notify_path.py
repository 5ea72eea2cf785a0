"""The path from a provider's callback to the downstream `job.succeeded`, counted: transactions,
reads and (on PostgreSQL) round trips to the server per job. Counts are structural, not timed,
so they hold on a loaded machine; bench/notify.py measures the latency they add up to.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import pytest
import respx
from PIL import Image

from service.app import create_app
from service.notifier import Notifier
from service.settings import Settings
from service.worker import Worker

pytestmark = pytest.mark.anyio

BASE = "https://api.bfl.ai"
IMAGE_URL = "https://delivery.eu2.bfl.ai/results/abc/sample.png"
HOOK_URL = "https://receiver.example.com/hook"


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (20, 200, 40)).save(buffer, "PNG")
    return buffer.getvalue()


@contextmanager
def counted(database: Any) -> Iterator[Counter[str]]:
    """What the stores cost while the block runs: `transactions` and `reads` (each one hop to
    the database's thread or pool), and on PostgreSQL `round_trips` (each wait for the
    server's answer, storage/postgres/connection.py)."""
    counts: Counter[str] = Counter()
    postgres = hasattr(database, "_hop")
    name = "_hop" if postgres else "_run"
    original = getattr(database, name)

    def body(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(conn: Any) -> Any:
            try:
                return fn(conn)
            finally:
                counts["round_trips"] += getattr(conn, "round_trips", 0)
        return run

    async def hop(fn: Callable[[Any], Any], **kwargs: Any) -> Any:
        if postgres:
            counts["reads" if kwargs.get("what") == "read" else "transactions"] += 1
        else:
            counts["transactions" if "transaction" in getattr(fn, "func", fn).__name__ else "reads"] += 1
        return await original(body(fn), **kwargs)

    setattr(database, name, hop)
    try:
        yield counts
    finally:
        delattr(database, name)


@pytest.fixture
def providers() -> respx.Router:
    router = respx.Router(assert_all_mocked=True)
    router.post(f"{BASE}/v1/flux-pro-1.1").mock(return_value=httpx.Response(
        200, json={"id": "task-1", "polling_url": f"{BASE}/v1/get_result?id=task-1"}))
    router.get(IMAGE_URL).mock(return_value=httpx.Response(
        200, content=png_bytes(), headers={"content-type": "image/png"}))
    return router


@pytest.fixture
async def app(
    make_settings: Callable[..., Settings], clock: Any, providers: respx.Router
) -> AsyncIterator[Any]:
    received: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(204)

    built = create_app(make_settings(), transport=httpx.MockTransport(providers.async_handler),
                       notify_transport=httpx.MockTransport(receive), clock=clock,
                       rand=random.Random(7), run_workers=False)
    async with built.router.lifespan_context(built) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await built(scope, receive, send)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state),
                                     base_url="https://hooks.example.com") as client:
            yield client, built.state.ctx, received


async def test_count_the_path(app, backend):
    client, ctx, received = app
    assert (await client.post("/v1/subscriptions", json={"url": HOOK_URL, "events": ["job.succeeded"]})
            ).status_code == 201
    job = (await client.post("/v1/jobs", json={
        "provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "fox"}})).json()
    worker, notifier = Worker(ctx), Notifier(ctx)
    assert await worker.run_once() == 1
    secret = (await ctx.store.jobs.get_job(job["id"])).webhook_secret
    body = json.dumps({"id": "task-1", "status": "Ready", "result": {"sample": IMAGE_URL}}).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    path = f"/v1/callbacks/bfl/{ctx.tokens.issue('bfl', job['id'])}"
    stages = {}
    with counted(ctx.store) as c:
        answered = await client.post(path, content=body, headers={
            "X-BFL-Signature": f"sha256={signature}", "Content-Type": "application/json"})
        assert answered.status_code == 200
    stages["callback"] = dict(c)
    with counted(ctx.store) as c:
        assert await worker.run_once() == 1
    stages["fetch"] = dict(c)
    with counted(ctx.store) as c:
        assert await notifier.run_once() == 1
    stages["notify"] = dict(c)
    print(backend, stages)
    assert [json.loads(r.content)["type"] for r in received] == ["job.succeeded"]
    _ = anyio
