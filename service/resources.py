"""What the web app and the workers share, opened once per process: the database, the blob
store, the HTTP clients (with one TLS context), the provider adapters, the wake-up signals.

`fluxhook worker` and `fluxhook tick` open these without the web app, so this module imports
no handler and no Starlette.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

import anyio

from service.catalog import Catalog
from service.context import Clock, Signals, WorkContext
from service.egress import EgressPolicy
from service.errors import ConfigError
from service.http_clients import HttpClients
from service.providers.base import Adapter
from service.settings import ProviderSettings, Settings
from service.stores import open_stores
from service.tokens import CallbackTokens, UploadTokens
from storage.blobs import open_blob_store
from storage.records import WAKE_KINDS

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("fluxhook")


def system_clock() -> int:
    return time.time_ns() // 1_000_000


def build_adapters(settings: Settings) -> dict[str, Adapter]:
    """One adapter per configured provider (a key, or the simulator serving it)."""
    return {name: _adapter(name, p) for name, p in settings.providers.items()}


def _adapter(name: str, p: ProviderSettings) -> Adapter:
    # Only the configured providers' modules are imported: ~1-2 ms each (cold start).
    if name == "fal":
        from service.providers.fal import FAL_JWKS_URL, FalAdapter

        return FalAdapter(p.base_url, p.api_key, p.output_hosts, jwks_url=p.keys_url or FAL_JWKS_URL)
    if name == "replicate":
        from service.providers.replicate import ReplicateAdapter

        return ReplicateAdapter(p.base_url, p.api_key, p.output_hosts, webhook_secret=p.signing_secret)
    if name == "bfl":
        from service.providers.bfl import BflAdapter

        return BflAdapter(p.base_url, p.api_key, p.output_hosts)
    if name == "cometapi":
        from service.providers.cometapi import CometApiAdapter

        return CometApiAdapter(p.base_url, p.api_key, p.output_hosts)
    if name == "apiframe":
        from service.providers.apiframe import ApiframeAdapter

        return ApiframeAdapter(p.base_url, p.api_key, p.output_hosts)
    if name == "runcomfy":
        from service.providers.runcomfy import RunComfyAdapter

        return RunComfyAdapter(p.base_url, p.api_key, p.output_hosts)
    raise ValueError(f"no adapter for provider {name!r}")


@asynccontextmanager
async def open_context(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    notify_transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = system_clock,
    rand: random.Random | None = None,
    follow_wake_ups: bool = True,
    wake_kinds: Collection[str] = WAKE_KINDS,
) -> AsyncIterator[WorkContext]:
    """Open the database, blob store and HTTP clients that the web app and workers share.

    `transport` answers provider calls and downloads; `notify_transport` carries notifications
    (by default SSRF-guarded by FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS). Without
    `follow_wake_ups`, other processes' commits do not fire `signals`: for a process whose
    loops never wait to be woken (`fluxhook tick`, service/inline.py `run_rounds`). With it,
    they fire only the signals `wake_kinds` names (storage/records.py `WAKE_KINDS`): what this
    process has loops waiting on.
    """
    store = await open_stores(settings, public_url=settings.public_url)
    try:
        policy = EgressPolicy.from_setting(settings.allow_private_destinations)
    except ValueError as exc:
        await store.close()
        raise ConfigError(f"FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS: {exc}") from exc
    try:
        blobs = open_blob_store(settings.blob_location, aws=settings.aws)
    except ValueError as exc:
        await store.close()
        raise ConfigError(str(exc)) from exc
    # Made on first use: a tick with nothing due sends nothing (service/http_clients.py).
    http = HttpClients(timeout=settings.http_timeout_s, notify_timeout=settings.webhook_timeout_s,
                       policy=policy, transport=transport, notify_transport=notify_transport)
    try:
        removed = await blobs.remove_partials()
        if removed:
            log.info("removed %d partial download(s) left by an earlier process", removed)
        signals = Signals()
        async with anyio.create_task_group() as wake_ups:
            # Work committed by other processes wakes this one's loops and streams (PostgreSQL:
            # LISTEN/NOTIFY; SQLite: its WAL file watched).
            if follow_wake_ups:
                wake_ups.start_soon(store.follow_wake_ups, partial(_wake, signals), wake_kinds)
            yield WorkContext(
                settings=settings,
                store=store,
                blobs=blobs,
                adapters=build_adapters(settings),
                catalog=Catalog.default(),
                http=http,
                tokens=CallbackTokens(settings.secret_key),
                upload_tokens=UploadTokens(settings.secret_key),
                clock=clock,
                rand=rand or random.Random(),
                egress=policy,
                signals=signals,
            )
            wake_ups.cancel_scope.cancel()
    finally:
        await http.aclose()
        await blobs.close()
        await store.close()


def _wake(signals: Signals, kind: str) -> None:
    getattr(signals, kind).fire()
