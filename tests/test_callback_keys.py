"""The keyring that verifies account-signed callbacks (Replicate, fal) with fetched keys."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

import anyio
import httpx
import pytest

from service.callback_keys import CallbackKeyring
from service.errors import CallbackRejected
from service.providers.base import (
    AccountSigned,
    CallbackKeys,
    ProviderCall,
    RawResponse,
    raise_for_error,
)

KEYS_URL = "https://keys.example/keys"


class KeyedAdapter:
    """A minimal account-signed adapter: HMAC-SHA256 of the body, hex, under any listed key."""

    name = "keyed"
    keys_max_age_ms = 60_000

    def __init__(self, configured: bytes | None = None) -> None:
        self._configured = configured

    def configured_keys(self) -> CallbackKeys | None:
        return CallbackKeys((self._configured,)) if self._configured else None

    def keys_call(self) -> ProviderCall:
        return ProviderCall("GET", KEYS_URL)

    def parse_keys(self, response: RawResponse, *, now_ms: int) -> CallbackKeys:
        raise_for_error(response, now_ms=now_ms, what="keys")
        return CallbackKeys(tuple(k.encode() for k in response.body.decode().split(",")))

    def verify_signed(self, headers: Mapping[str, str], body: bytes, keys: CallbackKeys, *,
                      now_ms: int) -> None:
        signature = headers.get("x-sig")
        if signature is None:
            raise CallbackRejected("missing signature")
        for key in keys.values:
            if hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest(), signature):
                return
        raise CallbackRejected("no key matches", code="unknown_key")


def signed(key: bytes, body: bytes) -> dict[str, str]:
    return {"x-sig": hmac.new(key, body, hashlib.sha256).hexdigest()}


class KeyServer:
    def __init__(self, keys: str, status: int = 200) -> None:
        self.keys = keys
        self.status = status
        self.fetches = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        return httpx.Response(self.status, content=self.keys.encode())


def run(keyring: CallbackKeyring, adapter: KeyedAdapter, server: KeyServer,
        headers: dict[str, str], body: bytes, now_ms: int) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(server.handler)) as client:
            await keyring.verify(adapter, headers, body, client=client, now_ms=now_ms, timeout=5)

    anyio.run(go)


def test_a_test_adapter_satisfies_the_account_signed_contract() -> None:
    assert isinstance(KeyedAdapter(), AccountSigned)


def test_keys_are_fetched_once_and_reused_while_fresh() -> None:
    keyring, adapter, server = CallbackKeyring(), KeyedAdapter(), KeyServer("k1")
    run(keyring, adapter, server, signed(b"k1", b"a"), b"a", now_ms=1_000)
    run(keyring, adapter, server, signed(b"k1", b"b"), b"b", now_ms=2_000)
    assert server.fetches == 1
    run(keyring, adapter, server, signed(b"k1", b"c"), b"c", now_ms=1_000 + 60_000)
    assert server.fetches == 2  # older than keys_max_age_ms: fetched again


def test_a_rotated_key_is_followed_by_one_refetch_without_a_restart() -> None:
    keyring, adapter, server = CallbackKeyring(), KeyedAdapter(), KeyServer("old")
    run(keyring, adapter, server, signed(b"old", b"a"), b"a", now_ms=1_000)
    server.keys = "new"  # rotation: new key, old key gone
    run(keyring, adapter, server, signed(b"new", b"b"), b"b", now_ms=2_000)
    assert server.fetches == 2
    with pytest.raises(CallbackRejected):
        run(keyring, adapter, server, signed(b"old", b"c"), b"c", now_ms=30_000)


def test_forged_signatures_cannot_make_the_keyring_fetch_more_than_once_per_gap() -> None:
    keyring, adapter, server = CallbackKeyring(refetch_gap_ms=10_000), KeyedAdapter(), KeyServer("k1")
    for now in (1_000, 1_500, 2_000, 9_000):
        with pytest.raises(CallbackRejected) as refused:
            run(keyring, adapter, server, signed(b"forged", b"x"), b"x", now_ms=now)
        assert refused.value.code == "unknown_key"
    assert server.fetches == 2  # the first fetch, and one refetch in the gap


def test_a_missing_signature_is_refused_without_a_refetch() -> None:
    keyring, adapter, server = CallbackKeyring(), KeyedAdapter(), KeyServer("k1")
    with pytest.raises(CallbackRejected):
        run(keyring, adapter, server, {}, b"x", now_ms=1_000)
    assert server.fetches == 1


def test_keys_that_cannot_be_fetched_answer_503_so_the_provider_retries() -> None:
    keyring, adapter, server = CallbackKeyring(), KeyedAdapter(), KeyServer("", status=502)
    with pytest.raises(CallbackRejected) as refused:
        run(keyring, adapter, server, signed(b"k1", b"x"), b"x", now_ms=1_000)
    assert refused.value.status_code == 503
    assert refused.value.code == "keys_unavailable"


def test_configured_keys_are_used_and_never_fetched() -> None:
    keyring, adapter, server = CallbackKeyring(), KeyedAdapter(configured=b"set"), KeyServer("k1")
    run(keyring, adapter, server, signed(b"set", b"a"), b"a", now_ms=1_000)
    with pytest.raises(CallbackRejected):
        run(keyring, adapter, server, signed(b"k1", b"b"), b"b", now_ms=2_000)
    assert server.fetches == 0
