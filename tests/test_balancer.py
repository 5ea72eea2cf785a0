"""The test load balancer (tests/balancer.py): spreads connections, skips an upstream that is down."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.loopback import bind_loopback, serve
from tests.balancer import balancing
from tests.e2e import free_port

pytestmark = pytest.mark.anyio


def named(name: str) -> Starlette:
    async def who(request: Request) -> PlainTextResponse:
        body = await request.body()
        return PlainTextResponse(f"{name}:{len(body)}")

    return Starlette(routes=[Route("/", who, methods=["GET", "POST"])])


def fresh_connections() -> httpx.AsyncClient:
    return httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=10)


async def test_connections_are_spread_over_the_live_upstreams_and_skip_one_that_is_down():
    first, second = bind_loopback(), bind_loopback()
    down = free_port()
    ports = [first.getsockname()[1], down, second.getsockname()[1]]
    async with serve(named("first"), first), serve(named("second"), second), balancing(ports) as lb:
        async with fresh_connections() as client:
            answers = Counter([(await client.post(lb.url, content=b"x" * 100_000)).text for _ in range(8)])
    assert answers == {"first:100000": 4, "second:100000": 4}  # whole bodies, both ways
    assert lb.refused[down] >= 4 and lb.turned_away == 0
    assert lb.connections[down] == 0


async def test_with_every_upstream_down_a_connection_is_closed_unanswered():
    async with balancing([free_port()]) as lb, fresh_connections() as client:
        with pytest.raises(httpx.TransportError):
            await client.get(lb.url)
    assert lb.turned_away == 1
