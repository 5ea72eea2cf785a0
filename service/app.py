"""The composition root: `create_app` builds fluxhook's Starlette app from settings."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route

from handlers.auth import ApiKeyMiddleware
from handlers.callbacks import receive_callback
from handlers.errors import EXCEPTION_HANDLERS
from handlers.events import stream_events
from handlers.health import healthz
from handlers.jobs import cancel_job, create_job, delete_job, get_job, get_output, list_jobs
from handlers.models import list_models
from handlers.subscriptions import (
    create_subscription,
    delete_subscription,
    get_subscription,
    job_deliveries,
    list_subscriptions,
    recover,
    redeliver,
    rotate_secret,
    subscription_deliveries,
    update_subscription,
    webhook_secret,
)
from handlers.tick import run_tick
from handlers.uploads import create_upload, get_upload
from service.address import announce, withdraw
from service.catalog import Catalog
from service.context import Clock, Signals, WorkContext
from service.egress import EgressPolicy, guarded_transport
from service.errors import ConfigError
from service.logs import quiet_url_loggers
from service.notifier import Notifier
from service.providers.apiframe import ApiframeAdapter
from service.providers.base import Adapter
from service.providers.bfl import BflAdapter
from service.providers.cometapi import CometApiAdapter
from service.providers.runcomfy import RunComfyAdapter
from service.retention import prune_periodically
from service.settings import SIMULATOR_MOUNT, Settings
from service.stores import open_stores
from service.tokens import CallbackTokens, UploadTokens
from service.worker import Worker
from storage.blobs import open_blob_store

log = logging.getLogger("fluxhook")


def system_clock() -> int:
    return time.time_ns() // 1_000_000


ADAPTERS: dict[str, type[BflAdapter] | type[ApiframeAdapter] | type[RunComfyAdapter]] = {
    "bfl": BflAdapter,
    "cometapi": CometApiAdapter,
    "apiframe": ApiframeAdapter,
    "runcomfy": RunComfyAdapter,
}


def build_adapters(settings: Settings) -> dict[str, Adapter]:
    """One adapter per configured provider (a key, or the simulator serving it)."""
    return {
        name: ADAPTERS[name](p.base_url, p.api_key, p.output_hosts) for name, p in settings.providers.items()
    }


@asynccontextmanager
async def open_context(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    notify_transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = system_clock,
    rand: random.Random | None = None,
) -> AsyncIterator[WorkContext]:
    """Open the database, blob store and HTTP clients that the web app and workers share.

    `transport` answers provider calls and downloads; `notify_transport` carries notifications
    (by default SSRF-guarded by FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS).
    """
    store = await open_stores(settings, public_url=settings.public_url)
    try:
        policy = EgressPolicy.from_setting(settings.allow_private_destinations)
    except ValueError as exc:
        await store.close()
        raise ConfigError(f"FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS: {exc}") from exc
    if notify_transport is None:
        notify_transport = guarded_transport(policy)
    try:
        blobs = open_blob_store(settings.blob_location, aws=settings.aws)
    except ValueError as exc:
        await store.close()
        raise ConfigError(str(exc)) from exc
    try:
        removed = await blobs.remove_partials()
        if removed:
            log.info("removed %d partial download(s) left by an earlier process", removed)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        signals = Signals()
        async with (
            httpx.AsyncClient(transport=transport, limits=limits, timeout=settings.http_timeout_s) as client,
            httpx.AsyncClient(
                transport=notify_transport, follow_redirects=False, timeout=settings.webhook_timeout_s
            ) as notify_client,
            anyio.create_task_group() as wake_ups,
        ):
            # Work committed by other processes (PostgreSQL) wakes this one's loops and streams.
            wake_ups.start_soon(store.follow_wake_ups, partial(_wake, signals))
            yield WorkContext(
                settings=settings,
                store=store,
                blobs=blobs,
                adapters=build_adapters(settings),
                catalog=Catalog.default(),
                client=client,
                notify_client=notify_client,
                tokens=CallbackTokens(settings.secret_key),
                upload_tokens=UploadTokens(settings.secret_key),
                clock=clock,
                rand=rand or random.Random(),
                egress=policy,
                signals=signals,
            )
            wake_ups.cancel_scope.cancel()
    finally:
        await blobs.close()
        await store.close()


def _wake(signals: Signals, kind: str) -> None:
    getattr(signals, kind).fire()


def _callable_from_signal_handler(fn: Callable[[], None]) -> Callable[[], None]:
    """`fn`, to be run in this event loop, callable from a signal handler or another thread."""
    loop = asyncio.get_running_loop()  # uvicorn runs asyncio

    def call() -> None:
        loop.call_soon_threadsafe(fn)

    return call


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    notify_transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = system_clock,
    rand: random.Random | None = None,
    run_workers: bool = True,
    simulator: Starlette | None = None,
) -> Starlette:
    """fluxhook's web app. With `run_workers`, the workers run in-process under its lifespan
(never in serverless mode, where requests do the work they cause: service/inline.py).

    `simulator`, when given, is mounted at /simulator and its lifespan run alongside ours.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        quiet_url_loggers()  # whoever configured logging, token-bearing URLs stay out of it
        async with AsyncExitStack() as stack:
            if simulator is not None:
                await stack.enter_async_context(simulator.router.lifespan_context(simulator))
            ctx = await stack.enter_async_context(
                open_context(
                    settings, transport=transport, notify_transport=notify_transport, clock=clock, rand=rand
                )
            )
            app.state.ctx = ctx  # for tests and tools holding the app; handlers use request.state
            # Workers in other processes that were given no FLUXHOOK_PUBLIC_URL use this address.
            owner = await announce(ctx)
            stack.push_async_callback(withdraw, ctx, owner)
            stop = anyio.Event()
            # `fluxhook serve` calls this from its SIGTERM handler, so the workers stop claiming
            # at once and wind down while uvicorn drains connections, not after.
            app.state.stop_workers = _callable_from_signal_handler(stop.set)
            async with anyio.create_task_group() as group:
                if run_workers and not settings.serverless:  # serverless: requests and ticks do it
                    group.start_soon(Worker(ctx, stop=stop).run)
                    group.start_soon(Notifier(ctx, stop=stop).run)
                    group.start_soon(prune_periodically, ctx, stop)
                log.info("fluxhook ready: %r", settings)
                yield {"ctx": ctx}
                stop.set()  # the loops finish or hand back their work within the grace, and return

    routes: list[Route | Mount] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/jobs", create_job, methods=["POST"]),
        Route("/v1/jobs", list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}", delete_job, methods=["DELETE"]),
        Route("/v1/jobs/{job_id}/outputs/{index}", get_output, methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/deliveries", job_deliveries, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/subscriptions", create_subscription, methods=["POST"]),
        Route("/v1/subscriptions", list_subscriptions, methods=["GET"]),
        Route("/v1/subscriptions/{subscription_id}", get_subscription, methods=["GET"]),
        Route("/v1/subscriptions/{subscription_id}", update_subscription, methods=["PATCH"]),
        Route("/v1/subscriptions/{subscription_id}", delete_subscription, methods=["DELETE"]),
        Route("/v1/subscriptions/{subscription_id}/rotate-secret", rotate_secret, methods=["POST"]),
        Route("/v1/subscriptions/{subscription_id}/deliveries", subscription_deliveries, methods=["GET"]),
        Route("/v1/subscriptions/{subscription_id}/recover", recover, methods=["POST"]),
        Route("/v1/deliveries/{delivery_id}/redeliver", redeliver, methods=["POST"]),
        Route("/v1/webhook-secret", webhook_secret, methods=["GET"]),
        Route("/v1/events", stream_events, methods=["GET"]),
        Route("/v1/uploads", create_upload, methods=["POST"]),
        Route("/uploads/{token}", get_upload, methods=["GET"]),
        Route("/v1/callbacks/{provider}/{token}", receive_callback, methods=["POST"]),
        Route("/v1/tick", run_tick, methods=["GET", "POST"]),  # GET: Vercel Cron sends only GET
    ]
    if simulator is not None:
        routes.append(Mount(SIMULATOR_MOUNT, app=simulator))
    return Starlette(
        routes=routes,
        middleware=[Middleware(ApiKeyMiddleware, api_key=settings.api_key)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
