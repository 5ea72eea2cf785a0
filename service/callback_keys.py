"""Account-wide callback keys (Replicate's signing secret, fal's JWKS): fetched from the
provider when first needed, cached for the adapter's `keys_max_age_ms`, and fetched once more
when a callback is signed with a key the cache does not hold (the provider rotated its keys).

A forged callback can look like a rotation, so such a refetch happens at most once per
`refetch_gap_ms` per provider; a callback refused meanwhile is retried by its provider, and
polling finishes the job anyway. Concurrent callbacks share one fetch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from service.errors import CallbackRejected, ProviderError
from service.providers.base import AccountSigned, CallbackKeys
from service.providers.transport import send

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("fluxhook.callback_keys")


@dataclass
class _Cached:
    keys: CallbackKeys
    fetched_at: int


@dataclass
class CallbackKeyring:
    refetch_gap_ms: int = 10_000
    _cached: dict[str, _Cached] = field(default_factory=dict, repr=False)
    _refetched_at: dict[str, int] = field(default_factory=dict, repr=False)
    _locks: dict[str, anyio.Lock] = field(default_factory=dict, repr=False)

    async def verify(
        self, adapter: AccountSigned, headers: Mapping[str, str], body: bytes, *,
        client: httpx.AsyncClient, now_ms: int, timeout: float,
    ) -> None:
        """Return when the callback is signed with one of the provider's keys; raise
        CallbackRejected otherwise (503 when the keys cannot be fetched: the provider retries)."""
        keys = await self._keys(adapter, client=client, now_ms=now_ms, timeout=timeout)
        try:
            adapter.verify_signed(headers, body, keys, now_ms=now_ms)
        except CallbackRejected as exc:
            if exc.code != "unknown_key" or adapter.configured_keys() is not None:
                raise
            last = self._refetched_at.get(adapter.name)
            if last is not None and now_ms - last < self.refetch_gap_ms:
                raise
            self._refetched_at[adapter.name] = now_ms
            log.info("%s: callback signed with an unknown key; fetching the keys again", adapter.name)
            keys = await self._keys(adapter, client=client, now_ms=now_ms, timeout=timeout,
                                    older_than=keys)
            adapter.verify_signed(headers, body, keys, now_ms=now_ms)

    async def _keys(
        self, adapter: AccountSigned, *, client: httpx.AsyncClient, now_ms: int, timeout: float,
        older_than: CallbackKeys | None = None,
    ) -> CallbackKeys:
        configured = adapter.configured_keys()
        if configured is not None:
            return configured
        lock = self._locks.setdefault(adapter.name, anyio.Lock())
        async with lock:
            cached = self._cached.get(adapter.name)
            # Another callback may have fetched fresh keys while this one waited for the lock.
            if cached is not None and cached.keys is not older_than \
                    and now_ms - cached.fetched_at < adapter.keys_max_age_ms:
                return cached.keys
            try:
                response = await send(client, adapter.keys_call(), timeout=timeout)
                keys = adapter.parse_keys(response, now_ms=now_ms)
            except ProviderError as exc:
                raise CallbackRejected(
                    f"{adapter.name}'s callback signing keys could not be fetched: {exc}",
                    code="keys_unavailable", status_code=503) from exc
            self._cached[adapter.name] = _Cached(keys, now_ms)
            return keys
