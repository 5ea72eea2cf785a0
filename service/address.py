"""One public URL for every process: the web announces the address it serves; workers adopt it.

Callback URLs, output URLs in job documents and the embedded simulator's base URL
(`<public URL>/simulator`) all hang off the public URL, so web, worker and tick must agree on it.
FLUXHOOK_PUBLIC_URL, when set, is that address for everyone. Without it only `fluxhook serve`
knows one: the address it listens on. It announces it in the shared database at start-up (and
withdraws it when it stops), and `worker` and `tick` use the announced one. They never build one
from their own `PORT`: a Procfile runner gives every process its own port, and callbacks would go
to a port nobody serves. A worker with no address to use waits, submitting nothing; `tick` exits.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping

import anyio

from service.context import WorkContext
from service.errors import ConfigError
from service.resources import build_adapters
from service.settings import Settings, redact_url
from service.stores import open_stores

log = logging.getLogger("fluxhook")

WAIT_INTERVAL_S = 1.0  # how often a waiting worker looks for an announcement
FOLLOW_INTERVAL_S = 2.0  # how often a running worker checks that the announcement still holds


class AddressUnknown(ConfigError):
    """Neither FLUXHOOK_PUBLIC_URL nor an announcement from a web process gives the public URL."""


def unknown_message(settings: Settings) -> str:
    database = redact_url(settings.database_url) if settings.uses_postgres else settings.db_path
    return (
        "the public URL is unknown: FLUXHOOK_PUBLIC_URL is not set and no `fluxhook serve` has "
        f"announced the address it serves in {database}. Set FLUXHOOK_PUBLIC_URL to the "
        "web process's address (the same for every process), or start `fluxhook serve` with "
        "this database; until then nothing is submitted"
    )


async def announce(ctx: WorkContext) -> str:
    """Announce the address this web process serves; returns the token that withdraws it."""
    owner = secrets.token_hex(8)
    await ctx.store.addresses.announce_address(ctx.settings.public_url, owner=owner, now=ctx.clock())
    return owner


async def withdraw(ctx: WorkContext, owner: str) -> None:
    with anyio.CancelScope(shield=True):
        await ctx.store.addresses.withdraw_address(owner=owner)


async def agreed_settings(
    settings: Settings,
    environ: Mapping[str, str],
    *,
    wait: bool,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> Settings:
    """Settings for a worker or tick, on the public URL every process uses.

    With FLUXHOOK_PUBLIC_URL set, `settings` as they are. Otherwise the settings rebuilt on the
    address a web process announced. With none announced: `wait` logs a warning naming the
    setting and looks again every WAIT_INTERVAL_S; without `wait`, AddressUnknown.
    """
    if settings.public_url_configured:
        return settings
    store = await open_stores(settings)
    try:
        warned = False
        while (announced := await store.addresses.announced_address()) is None:
            if not wait:
                raise AddressUnknown(unknown_message(settings))
            if not warned:
                log.warning("%s; waiting for one to be announced", unknown_message(settings))
                warned = True
            await sleep(WAIT_INTERVAL_S)
    finally:
        await store.close()
    log.info("using the public URL the web process announced: %s", announced)
    return Settings.from_env(environ, public_url=announced)


async def follow_address(ctx: WorkContext, environ: Mapping[str, str]) -> None:
    """Keep a running worker on the announced address: a web process restarted on another port
    announces again, and callbacks and output URLs move with it. Runs until cancelled."""
    if ctx.settings.public_url_configured:
        return
    while True:
        await anyio.sleep(FOLLOW_INTERVAL_S)
        announced = await ctx.store.addresses.announced_address()
        if announced is None or announced == ctx.settings.public_url:
            continue  # withdrawn (the web stopped): keep the last address until another is announced
        log.warning("the web process now announces %s (was %s); using it", announced, ctx.settings.public_url)
        adopt(ctx, Settings.from_env(environ, public_url=announced))


def adopt(ctx: WorkContext, settings: Settings) -> None:
    """Point `ctx` at `settings`' public URL: callback URLs, adapters and event documents."""
    ctx.settings = settings
    ctx.adapters = build_adapters(settings)
    ctx.store.public_url = settings.public_url
