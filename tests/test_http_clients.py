"""The shared HTTP clients, made on first use (service/http_clients.py)."""

from __future__ import annotations

import httpx
import pytest

from service.egress import EgressPolicy, refused_cause
from service.http_clients import HttpClients

pytestmark = pytest.mark.anyio


def answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(204)


async def test_each_client_is_made_once_and_closed_with_the_other():
    clients = HttpClients(timeout=5, notify_timeout=5, policy=EgressPolicy(),
                          transport=httpx.MockTransport(answer),
                          notify_transport=httpx.MockTransport(answer))
    client, notify = clients.client, clients.notify
    assert clients.client is client and clients.notify is notify  # one pool each, kept
    assert client is not notify
    assert (await client.get("https://api.example.com/x")).status_code == 204
    await clients.aclose()
    assert client.is_closed and notify.is_closed


async def test_the_notify_client_made_by_default_is_guarded_and_follows_no_redirect():
    clients = HttpClients(timeout=5, notify_timeout=5, policy=EgressPolicy())
    try:
        assert clients.notify.follow_redirects is False
        with pytest.raises(httpx.ConnectError) as info:  # a name: the guard refuses it on connecting
            await clients.notify.post("http://localhost:9/hook", content=b"{}")
        refused = refused_cause(info.value)
        assert refused is not None and refused.reason == "loopback"
    finally:
        await clients.aclose()
