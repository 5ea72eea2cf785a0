"""From a provider's callback to the downstream `job.succeeded`: the download hands the
deliveries its commit makes to the notifier running in its process (leased in that same
transaction, so neither a claim nor a wake-up stands between the commit and the send), and the
path's cost is counted: transactions, reads and, on PostgreSQL, round trips to the server.
Counts are structural, not timed; bench/notify.py measures the latency they add up to.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import random
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
import respx
from PIL import Image

from service.app import create_app
from service.callbacks import apply_all
from service.context import WorkContext
from service.notifier import Notifier
from service.settings import Settings
from service.worker import Worker
from storage.records import ClaimedDelivery, DeliveryLease

pytestmark = pytest.mark.anyio

BASE = "https://api.bfl.ai"
IMAGE_URL = "https://delivery.eu2.bfl.ai/results/abc/sample.png"
HOOK_URL = "https://receiver.example.com/hook"
JOB_HOOK_URL = "https://job-receiver.example.com/hook"
LEASE_MS = 60_000


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (20, 200, 40)).save(buffer, "PNG")
    return buffer.getvalue()


@contextmanager
def counted(database: Any) -> Iterator[Counter[str]]:
    """What the stores cost while the block runs: `transactions` and `reads` (each one hop to
    the database's thread or pool), and on PostgreSQL `round_trips` (each wait for the
    server's answer, storage/postgres/connection.py `Connection.round_trips`). The SQLite WAL
    watcher's looks at whether another process committed come and go with the machine's timing
    (one per wake at most): they are not counted."""
    counts: Counter[str] = Counter()
    postgres = hasattr(database, "_hop")
    name = "_hop" if postgres else "_run"
    original = getattr(database, name)

    def body(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(conn: Any) -> Any:
            try:
                return fn(conn)
            finally:
                if postgres:
                    counts["round_trips"] += conn.round_trips

        return run

    async def hop(fn: Callable[[Any], Any], **kwargs: Any) -> Any:
        body_name = getattr(getattr(fn, "args", (fn,))[0], "__qualname__", "")
        if "committed_elsewhere" in body_name:  # the WAL watcher's look: not the path's own cost
            return await original(fn, **kwargs)
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


@dataclass
class Taker:
    """A stand-in for the notifier running in the process (service/context.py `Handoff`)."""

    accept: bool = True
    limit: int = 10
    exclude: tuple[str, ...] = ()
    now: int = 0
    taken: list[ClaimedDelivery] = field(default_factory=list)

    def offer(self, now: int) -> DeliveryLease | None:
        self.now = now
        return DeliveryLease(until=now + LEASE_MS, limit=self.limit, exclude=self.exclude)

    def take(self, deliveries: Sequence[ClaimedDelivery]) -> bool:
        if self.accept:
            self.taken.extend(deliveries)
        return self.accept


@pytest.fixture
def providers() -> respx.Router:
    router = respx.Router(assert_all_mocked=True)
    router.post(f"{BASE}/v1/flux-pro-1.1").mock(return_value=httpx.Response(
        200, json={"id": "task-1", "polling_url": f"{BASE}/v1/get_result?id=task-1"}))
    router.get(IMAGE_URL).mock(side_effect=lambda _: image_response())
    return router


def image_response() -> httpx.Response:
    return httpx.Response(200, content=png_bytes(), headers={"content-type": "image/png"})


@dataclass
class Stack:
    client: httpx.AsyncClient
    ctx: WorkContext
    received: list[httpx.Request]
    arrived: anyio.Event = field(default_factory=anyio.Event)
    applying_cost: Counter[str] = field(default_factory=Counter)  # what `ready_job`'s apply cost


@pytest.fixture
async def stack(
    make_settings: Callable[..., Settings], clock: Any, providers: respx.Router
) -> AsyncIterator[Stack]:
    # Nothing in the background: `ready_job` applies, the tests run the loops they need.
    async with serving(make_settings(), clock, providers, run_workers=False, apply_callbacks=False) as built:
        yield built


@asynccontextmanager
async def serving(
    settings: Settings, clock: Any, providers: respx.Router, **app_args: Any
) -> AsyncIterator[Stack]:
    """fluxhook's app under its lifespan, with `app_args` for `create_app`, and a client."""
    received: list[httpx.Request] = []
    arrived = anyio.Event()

    def receive(request: httpx.Request) -> httpx.Response:
        received.append(request)
        arrived.set()
        return httpx.Response(204)

    built = create_app(settings, transport=httpx.MockTransport(providers.async_handler),
                       notify_transport=httpx.MockTransport(receive), clock=clock,
                       rand=random.Random(7), **app_args)
    async with built.router.lifespan_context(built) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await built(scope, receive, send)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state),
                                     base_url="https://hooks.example.com") as client:
            yield Stack(client, built.state.ctx, received, arrived)


async def ready_job(stack: Stack, *, job_hook: bool = False) -> str:
    """A subscription to `job.succeeded`, and a job submitted and called back `Ready`: its
    download is due. The job's id."""
    job_id = await called_back_ready(stack, job_hook=job_hook)
    with counted(stack.ctx.store) as applying:
        await apply_all(stack.ctx)  # as the applier does right after the answer (service/callbacks.py)
    stack.applying_cost = applying
    return job_id


async def called_back_ready(stack: Stack, *, job_hook: bool = False) -> str:
    """A subscription to `job.succeeded`, and a job submitted and called back `Ready`: the
    callback is recorded, not yet applied. The job's id."""
    client, ctx = stack.client, stack.ctx
    subscribed = await client.post("/v1/subscriptions", json={"url": HOOK_URL, "events": ["job.succeeded"]})
    assert subscribed.status_code == 201, subscribed.text
    body: dict[str, Any] = {"provider": "bfl", "model": "flux-pro-1.1", "input": {"prompt": "fox"}}
    if job_hook:
        body |= {"webhook_url": JOB_HOOK_URL, "webhook_events": ["job.succeeded"]}
    job = (await client.post("/v1/jobs", json=body)).json()
    assert await Worker(ctx).run_once() == 1  # the submit
    secret = (await ctx.store.jobs.get_job(job["id"])).webhook_secret
    callback = json.dumps({"id": "task-1", "status": "Ready", "result": {"sample": IMAGE_URL}}).encode()
    signature = hmac.new(secret.encode(), callback, hashlib.sha256).hexdigest()
    answered = await client.post(f"/v1/callbacks/bfl/{ctx.tokens.issue('bfl', job['id'])}", content=callback,
                                 headers={"X-BFL-Signature": f"sha256={signature}",
                                          "Content-Type": "application/json"})
    assert answered.status_code == 200, answered.text
    return str(job["id"])


def noting_claims(loop: Worker | Notifier) -> list[Any]:
    """What `loop`'s claims return from now on, in a list that grows as it claims."""
    claimed: list[Any] = []
    claim = loop.claim

    async def claim_and_note(limit: int) -> list[Any]:
        found = await claim(limit)
        claimed.extend(found)
        return found

    loop.claim = claim_and_note  # type: ignore[method-assign]
    return claimed


def sent_types(stack: Stack) -> list[str]:
    return [json.loads(request.content)["type"] for request in stack.received]


async def test_a_download_hands_the_success_it_commits_to_the_notifier_running_beside_it(stack):
    ctx = stack.ctx
    job_id = await ready_job(stack)
    notifier = Notifier(ctx)
    claimed = noting_claims(notifier)
    async with anyio.create_task_group() as group:
        group.start_soon(notifier.run)
        with anyio.fail_after(10):
            while ctx.handoff is not notifier:
                await anyio.sleep(0.01)
        assert await Worker(ctx).run_once() == 1  # the download
        with anyio.fail_after(10):
            await stack.arrived.wait()
        notifier.stop.set()

    assert sent_types(stack) == ["job.succeeded"]
    assert claimed == []  # it was never claimed: the download's own transaction leased it
    [(delivery, attempts)] = await ctx.store.deliveries.list_deliveries(job_id=job_id)
    assert (delivery.status, [a.attempt for a in attempts]) == ("delivered", [1])
    assert ctx.handoff is None  # a stopped notifier takes nothing


async def apply_beside(worker: Worker, job_id: str) -> None:
    """Apply what the inbox holds while `worker` runs (this process's `TaskHandoff`, as in
    `fluxhook worker`), until `job_id` has succeeded."""
    ctx = worker.ctx
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        with anyio.fail_after(10):
            while ctx.task_handoff is not worker:
                await anyio.sleep(0.01)
        assert await apply_all(ctx) == 1
        with anyio.fail_after(10):
            while (await ctx.store.jobs.get_job(job_id)).status != "succeeded":
                await anyio.sleep(0.01)
        worker.stop.set()


async def test_a_worker_applying_a_callback_runs_the_download_it_causes_without_claiming_it(stack):
    """`serve --no-workers` beside `fluxhook worker`: the worker's applier applies what the web
    recorded (the commit woke it), and leases the download that makes to its own worker in the
    same transaction, which starts it at once: no claim, no second wake-up between them."""
    ctx = stack.ctx
    job_id = await called_back_ready(stack)
    worker = Worker(ctx)
    claimed = noting_claims(worker)
    await apply_beside(worker, job_id)
    assert claimed == []  # the download ran, and no claim ever returned it


async def test_the_download_a_callback_causes_starts_before_its_applying_transaction_commits(
    stack, providers
):
    """The image's URL is known once the applying transaction has read the job: the worker's
    download starts then, beside the rest of that transaction, and its task takes the result
    once committed instead of downloading again (service/early_downloads.py)."""
    ctx = stack.ctx
    job_id = await called_back_ready(stack)
    fetched = threading.Event()
    gets: list[httpx.Request] = []

    def image(request: httpx.Request) -> httpx.Response:
        gets.append(request)
        fetched.set()
        return image_response()

    providers.get(IMAGE_URL).mock(side_effect=image)
    apply = ctx.store.jobs.apply_callbacks
    inside: list[bool] = []

    async def apply_waiting_for_the_image(**kwargs: Any) -> Any:
        # Called in the transaction after the callback's writes, before the COMMIT: the
        # download, started earlier, reaches the provider while the transaction is still open.
        return await apply(**{**kwargs, "applied": lambda _: inside.append(fetched.wait(10))})

    ctx.store.jobs.apply_callbacks = apply_waiting_for_the_image  # type: ignore[method-assign]
    await apply_beside(Worker(ctx), job_id)
    assert inside == [True]
    assert len(gets) == 1  # the task took the early download: not fetched twice
    [output] = (await ctx.store.jobs.get_outputs([job_id]))[job_id]
    assert output.sha256 == hashlib.sha256(png_bytes()).hexdigest()


async def test_an_early_download_no_task_here_takes_is_cancelled_and_a_failed_one_made_again(
    stack, providers
):
    ctx = stack.ctx
    route = providers.get(IMAGE_URL)
    release = anyio.Event()
    gets: list[httpx.Request] = []
    cancelled: list[httpx.Request] = []

    async def slow_image(request: httpx.Request) -> httpx.Response:
        gets.append(request)
        try:
            await release.wait()
        except anyio.get_cancelled_exc_class():
            cancelled.append(request)
            raise
        return image_response()

    def unavailable(request: httpx.Request) -> httpx.Response:
        gets.append(request)
        return httpx.Response(503)

    route.mock(side_effect=slow_image)
    early = ctx.early_downloads
    early.start(ctx, "job_a", "bfl", (IMAGE_URL,))
    early.start(ctx, "job_a", "bfl", (IMAGE_URL,))  # its transaction run again: the same download
    early.start(ctx, "job_b", "bfl", (IMAGE_URL,))
    with anyio.fail_after(10):
        while len(gets) < 2:  # both on their way to the provider
            await anyio.sleep(0.01)
    early.cancel(["job_a"])
    assert await early.take("job_a", (IMAGE_URL,)) is None  # cancelled: none to take
    assert await early.take("job_b", ("https://delivery.eu2.bfl.ai/other.png",)) is None  # other URLs
    route.mock(side_effect=unavailable)
    early.start(ctx, "job_c", "bfl", (IMAGE_URL,))
    assert await early.take("job_c", (IMAGE_URL,)) is None  # failed: the task downloads again
    release.set()
    assert len(gets) == 3  # job_a once, job_b, job_c
    assert cancelled == gets[:2]  # job_a's and job_b's downloads were stopped, not left running


async def test_a_web_without_workers_leaves_the_callbacks_it_records_to_the_workers(
    make_settings, clock, providers
):
    """Its applier only looks every FLUXHOOK_WORKER_IDLE_SECONDS, for what no worker applied:
    applying at once, it would leave the worker a claim to make for the download."""
    settings = make_settings(FLUXHOOK_WORKER_IDLE_SECONDS="60")
    async with serving(settings, clock, providers, run_workers=False, apply_callbacks=True) as web:
        await anyio.sleep(0.2)  # its first look, at start, is over
        job_id = await called_back_ready(web)
        await anyio.sleep(0.2)  # an applier woken by the callback would have applied it by now
        assert await web.ctx.store.jobs.pending_callbacks() == 1
        assert (await web.ctx.store.jobs.get_job(job_id)).status == "submitted"
        assert await apply_all(web.ctx) == 1  # as a worker's applier does


async def test_from_the_callback_on_a_job_costs_three_transactions_and_no_read(stack, backend):
    """Claim the download, record the success (its deliveries leased with it), record the
    delivery's attempt. On PostgreSQL each transaction's statements go out pipelined: the
    claim's read and its lease; the job's read, the event's reads, the writes; the attempt."""
    ctx = stack.ctx
    await ready_job(stack)
    taker = Taker()
    ctx.handoff = taker
    notifier = Notifier(ctx)
    with counted(ctx.store) as fetching:
        assert await Worker(ctx).run_once() == 1
    with counted(ctx.store) as notifying:
        for delivery in taker.taken:
            assert (await notifier.send(delivery)).delivered
    assert sent_types(stack) == ["job.succeeded"]
    assert dict(fetching) == {"transactions": 2, **({"round_trips": 4} if backend == "postgres" else {})}
    assert dict(notifying) == {"transactions": 1, **({"round_trips": 2} if backend == "postgres" else {})}


async def test_applying_a_recorded_callback_is_one_transaction_and_a_look_that_finds_none(stack, backend):
    """The applier's transaction, then `apply_all`'s look that finds the inbox empty. On
    PostgreSQL the first waits four times: for the inbox rows with their callbacks (one read,
    joined), the job, the event's reads, and the COMMIT, with which the reads of what is now
    due come back; the look twice (its read, its COMMIT). Reading the rows apart from their
    callbacks, and what is due before the COMMIT, cost two more."""
    await ready_job(stack)
    assert dict(stack.applying_cost) == {"transactions": 2,
                                         **({"round_trips": 6} if backend == "postgres" else {})}


async def test_leased_deliveries_are_no_other_notifiers_until_the_lease_runs_out(stack, clock):
    """A crash between the commit and the send: the deliveries wait out their lease, then any
    notifier claims them (the lost try counted, as after a crash between claim and send)."""
    ctx = stack.ctx
    job_id = await ready_job(stack, job_hook=True)
    taker = Taker()
    ctx.handoff = taker
    assert await Worker(ctx).run_once() == 1
    assert sorted(d.url for d in taker.taken) == sorted([HOOK_URL, JOB_HOOK_URL])
    assert {d.attempt for d in taker.taken} == {1}
    ctx.handoff = None
    elsewhere = Notifier(ctx)
    assert await elsewhere.claim(10) == []
    clock.advance(LEASE_MS / 1000 + 1)
    claimed = await elsewhere.claim(10)
    assert sorted((d.url, d.attempt, d.event_id) for d in claimed) == sorted(
        (d.url, 2, d.event_id) for d in taker.taken)
    assert stack.received == []
    assert (await ctx.store.jobs.get_job(job_id)).status == "succeeded"


async def test_deliveries_a_stopped_notifier_cannot_take_are_handed_back_at_once(stack):
    ctx = stack.ctx
    await ready_job(stack)
    taker = Taker(accept=False)
    ctx.handoff = taker
    assert await Worker(ctx).run_once() == 1
    ctx.handoff = None
    [claimed] = await Notifier(ctx).claim(10)  # at once, no lease to wait out
    assert (claimed.url, claimed.attempt) == (HOOK_URL, 1)


async def test_a_lease_takes_no_more_than_the_notifier_has_room_for(stack):
    """A destination at its in-flight cap is left out, and so is what is past the free slots:
    those wait for a claim, which a freed slot wakes the notifier for."""
    ctx = stack.ctx
    job_id = await ready_job(stack, job_hook=True)
    [sub] = await ctx.store.subscriptions.list_subscriptions()
    taker = Taker(exclude=(sub.id,))
    ctx.handoff = taker
    assert await Worker(ctx).run_once() == 1
    assert [d.url for d in taker.taken] == [JOB_HOOK_URL]
    ctx.handoff = None
    assert [d.url for d in await Notifier(ctx).claim(10)] == [HOOK_URL]
    assert (await ctx.store.jobs.get_job(job_id)).status == "succeeded"


async def test_a_lease_takes_no_more_than_the_notifiers_free_slots(stack):
    ctx = stack.ctx
    await ready_job(stack, job_hook=True)
    taker = Taker(limit=1)
    ctx.handoff = taker
    assert await Worker(ctx).run_once() == 1
    ctx.handoff = None
    [taken] = taker.taken
    [claimed] = await Notifier(ctx).claim(10)
    assert {taken.url, claimed.url} == {HOOK_URL, JOB_HOOK_URL}


async def test_a_download_with_nobody_to_hand_to_leaves_its_deliveries_for_a_claim(stack):
    ctx = stack.ctx
    await ready_job(stack)
    assert ctx.handoff is None
    assert await Worker(ctx).run_once() == 1
    [claimed] = await Notifier(ctx).claim(10)
    assert (claimed.url, claimed.attempt) == (HOOK_URL, 1)


async def test_a_claim_commits_without_waiting_for_the_disk_and_other_writes_wait(database, backend):
    """A claim only takes leases (storage/sql/__init__.py `durable=False`): losing one to a power
    failure is as if it had never been made. The setting is the transaction's own."""
    if backend == "sqlite":
        setting = "PRAGMA synchronous"
        relaxed, durable = 1, 2  # NORMAL, FULL
    else:  # the tests' server runs with it off anyway: what tells is where the value comes from
        setting = "SELECT setting || ' from ' || source FROM pg_settings WHERE name = 'synchronous_commit'"
        relaxed = "off from session"
        durable = await database.query(lambda conn: conn.execute(setting).fetchone()[0])
        assert durable != relaxed

    def read(conn: Any) -> Any:
        return conn.execute(setting).fetchone()[0]

    assert await database.transact(read, durable=False) == relaxed
    assert await database.transact(read) == durable
    assert await database.transact_then_read(lambda conn: (lambda value: lambda: value)(read(conn)),
                                             durable=False) == relaxed
    assert await database.query(read) == durable


async def test_the_workers_claims_are_the_writes_that_do_not_wait_for_the_disk(stack):
    ctx = stack.ctx
    await ready_job(stack)
    durable: list[tuple[str, bool]] = []
    for name in ("transact", "transact_then_read"):
        original = getattr(ctx.store, name)

        def wrapped(fn: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            owner, method = fn.__qualname__.split(".")[:2]
            if owner != "Database":  # not SQLite's transact_then_read calling its transact
                durable.append((method, kwargs.get("durable", True)))
            return _original(fn, *args, **kwargs)

        setattr(ctx.store, name, wrapped)
    taker = Taker()
    ctx.handoff = taker
    try:
        assert await Worker(ctx).run_once() == 1
        [delivery] = taker.taken
        await Notifier(ctx).send(delivery)
        await Notifier(ctx).claim(10)
    finally:
        for name in ("transact", "transact_then_read"):
            delattr(ctx.store, name)
    assert durable == [("claim_due_tasks", False), ("record_outputs", True),
                       ("record_delivery_attempt", True), ("claim_due_deliveries", False)]


async def test_the_success_event_carries_the_job_document_as_stored(stack):
    """The download's transaction builds `job.succeeded` from the job as it writes it (no read
    of it again): the document it carries is the one GET /v1/jobs/{id} answers afterwards."""
    ctx = stack.ctx
    job_id = await ready_job(stack, job_hook=True)
    taker = Taker()
    ctx.handoff = taker
    assert await Worker(ctx).run_once() == 1
    documents = {json.dumps(json.loads(d.body)["data"], sort_keys=True) for d in taker.taken}
    stored = (await stack.client.get(f"/v1/jobs/{job_id}")).json()
    assert documents == {json.dumps(stored, sort_keys=True)}
    assert stored["status"] == "succeeded" and stored["callbacks"] == 1 and len(stored["outputs"]) == 1
