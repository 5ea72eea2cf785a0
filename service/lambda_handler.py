"""AWS Lambda entry point: `service.lambda_handler.handler` serves fluxhook's app through
Mangum (API Gateway HTTP API payload 2.0 and REST API events, ALB, function URLs).

Mangum would run the app's lifespan (which opens the database, the blob store and the HTTP
clients) around every single event; here it runs once per execution environment instead, on
the first event, and what it opened is kept for the events after it: Lambda reuses an
environment, and Mangum reuses one event loop, for many events. Lambda freezes the environment
between events and may drop it without notice; nothing is lost by that, because fluxhook
commits before it answers, and a lease taken by a frozen or dropped environment runs out and
the work is claimed again by a tick.

Lambda gives no CPU between events, so fluxhook runs in serverless mode (FLUXHOOK_MODE is taken
to be `serverless`): requests do the work they cause, and a schedule (EventBridge) calls
`POST /v1/tick` or runs `fluxhook tick`. Secrets must come from the environment: a key created
in the environment's /tmp would differ from one environment to the next.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from mangum import Mangum
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from service.errors import ConfigError
from service.settings import Settings

REQUIRED = ("FLUXHOOK_SECRET_KEY", "FLUXHOOK_WEBHOOK_SECRET", "FLUXHOOK_PUBLIC_URL")


class StartedOnce:
    """An ASGI app whose lifespan is entered on the first request and left only by `close()`,
    its state handed to every request as a server would."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self._state: dict[str, Any] | None = None
        self._closing: asyncio.Event | None = None
        self._holder: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the lifespan is ours to run, not Mangum's
            return
        if self._state is None:
            await self._start()
        scope["state"] = dict(self._state or {})
        await self.app(scope, receive, send)

    async def _start(self) -> None:
        started: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._closing = asyncio.Event()
        self._holder = asyncio.get_running_loop().create_task(self._hold(started, self._closing))
        self._state = await started

    async def _hold(self, started: asyncio.Future[dict[str, Any]], closing: asyncio.Event) -> None:
        """Enter the lifespan and stay in it (one task, as anyio's task groups need) until closed."""
        try:
            async with self.app.router.lifespan_context(self.app) as state:
                started.set_result(dict(state or {}))
                await closing.wait()
        except BaseException as exc:
            if not started.done():  # start-up failed: the request that waited for it fails
                started.set_exception(exc)
            raise

    async def tick(self, seconds: float) -> dict[str, Any]:
        """One tick (service/tick.py) in this environment's context: what a scheduled direct
        invocation runs."""
        from service.tick import tick

        if self._state is None:
            await self._start()
        report = await tick((self._state or {})["ctx"], seconds=seconds)
        return report.as_json()

    async def close(self) -> None:
        """Leave the lifespan (tests; Lambda just stops the environment)."""
        if self._closing is not None and self._holder is not None:
            self._closing.set()
            await self._holder
        self._state = self._closing = self._holder = None


def lambda_settings(environ: Mapping[str, str]) -> Settings:
    """The settings from the function's environment: serverless, with its secrets given."""
    missing = [name for name in REQUIRED if not environ.get(name)]
    if missing:
        raise ConfigError(
            f"on AWS Lambda set {', '.join(missing)}: a secret created in one execution "
            "environment's /tmp would not be known to the next, and the public URL (the API "
            "Gateway's) is where providers call back"
        )
    env = {"FLUXHOOK_DATA_DIR": "/tmp/fluxhook", **environ}  # noqa: S108 (Lambda's only writable disk)
    return dataclasses.replace(Settings.from_env(env), serverless=True)


def make_handler(settings: Settings, **app_options: Any) -> tuple[Mangum, StartedOnce]:
    """A Lambda handler serving fluxhook's app for `settings`, and the app (to `close()`).
    `app_options` go to `create_app` (tests pass their transports)."""
    from service.app import create_app
    from service.logs import configure_logging

    configure_logging(settings.log_level)
    # The loop Mangum runs every event on, and so the one the lifespan's resources live on.
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = StartedOnce(create_app(settings, **app_options))
    return Mangum(app, lifespan="off"), app


class LambdaHandler:
    """Serves HTTP events through Mangum; runs a tick for a scheduled direct invocation whose
    event is `{"fluxhook": "tick"}` (EventBridge Scheduler: IAM decides who may invoke, so no
    token is needed, and no HTTP timeout cuts the tick short)."""

    def __init__(self, settings: Settings, **app_options: Any) -> None:
        self.settings = settings
        self.mangum, self.app = make_handler(settings, **app_options)

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event.get("fluxhook") == "tick":
            loop = asyncio.get_event_loop()
            return loop.run_until_complete(self.app.tick(self.settings.tick_s))
        return self.mangum(event, context)


_handler: LambdaHandler | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The function's handler (`service.lambda_handler.handler`)."""
    global _handler
    if _handler is None:
        _handler = LambdaHandler(lambda_settings(os.environ))
    return _handler(event, context)
