"""The composition root: `create_app` builds fluxhook's Starlette app from settings."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route

from handlers.auth import ApiKeyMiddleware
from handlers.callbacks import receive_callback
from handlers.dashboard import dashboard_mount
from handlers.errors import EXCEPTION_HANDLERS
from handlers.events import stream_events
from handlers.health import healthz
from handlers.jobs import cancel_job, create_job, delete_job, get_job, get_output, list_jobs
from handlers.metrics import metrics
from handlers.models import list_models
from handlers.openapi import openapi
from handlers.paths import NulPathMiddleware
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
from service.callbacks import apply_forever
from service.context import Clock
from service.logs import quiet_url_loggers
from service.notifier import Notifier
from service.resources import open_context, system_clock
from service.retention import prune_periodically
from service.settings import SIMULATOR_MOUNT, Settings
from service.worker import Worker
from storage.records import WAKE_KINDS

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("fluxhook")


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
    apply_callbacks: bool = True,
    simulator: Starlette | None = None,
) -> Starlette:
    """fluxhook's web app. With `run_workers`, the workers run in-process under its lifespan
(never in serverless mode, where requests do the work they cause: service/inline.py). With
    `apply_callbacks`, so does the applier of recorded callbacks (service/callbacks.py), workers
    or not (tests turn it off to drive it): with workers, it applies each callback as soon as it
    is recorded; without them, it leaves that to the workers' appliers, whom the commit wakes,
    and only looks now and then for what none of them applied.

    `simulator`, when given, is mounted at /simulator and its lifespan run alongside ours.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        quiet_url_loggers()  # whoever configured logging, token-bearing URLs stay out of it
        async with AsyncExitStack() as stack:
            if simulator is not None:
                await stack.enter_async_context(simulator.router.lifespan_context(simulator))
            # A web process without workers waits only on events (streams, ?wait=): other
            # processes' tasks, deliveries and callbacks are for the workers, whom they wake.
            loops = run_workers or settings.serverless
            ctx = await stack.enter_async_context(
                open_context(
                    settings, transport=transport, notify_transport=notify_transport, clock=clock,
                    rand=rand, wake_kinds=WAKE_KINDS if loops else ("events",),
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
                if apply_callbacks and not settings.serverless:
                    # Without workers here, the workers apply what this process records.
                    group.start_soon(partial(apply_forever, ctx, stop, eager=run_workers))
                if run_workers and not settings.serverless:  # serverless: requests and ticks do it
                    group.start_soon(Worker(ctx, stop=stop).run)
                    group.start_soon(Notifier(ctx, stop=stop).run)
                    group.start_soon(prune_periodically, ctx, stop)
                log.info("fluxhook ready: %r", settings)
                yield {"ctx": ctx}
                stop.set()  # the loops finish or hand back their work within the grace, and return

    routes: list[Route | Mount] = [
        # The busiest route first: the router tries the routes in order, and providers' callbacks
        # are most of the requests under load. No other route's path can match it.
        Route("/v1/callbacks/{provider}/{token}", receive_callback, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
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
        Route("/v1/tick", run_tick, methods=["GET", "POST"]),  # GET: Vercel Cron sends only GET
        dashboard_mount(settings),  # HTML pages, not in /openapi.json (service/openapi.py)
    ]
    if simulator is not None:
        routes.append(Mount(SIMULATOR_MOUNT, app=simulator))
    return Starlette(
        routes=routes,
        middleware=[Middleware(ApiKeyMiddleware, api_key=settings.api_key), Middleware(NulPathMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
