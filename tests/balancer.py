"""A loopback TCP load balancer for end-to-end tests: several web processes behind one address,
as behind a cloud load balancer.

Each accepted connection is piped, byte for byte, to the next upstream in turn (round robin);
an upstream that refuses the connection (its process is down) is skipped for the next one, so
clients and provider callbacks keep reaching fluxhook while one web process is dead. When
either side of a piped connection goes away, both are closed: a client whose web process was
killed mid-request sees its connection drop, as it would behind a real balancer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

HOST = "127.0.0.1"


@dataclass
class Balancer:
    """Round robin over `ports` on loopback, with failover. `url` is its public address."""

    ports: Sequence[int]
    url: str = ""
    connections: Counter[int] = field(default_factory=Counter)  # piped, per upstream port
    refused: Counter[int] = field(default_factory=Counter)  # connect failures, per upstream port
    turned_away: int = 0  # connections closed unanswered because every upstream refused
    _turn: int = 0

    async def handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            upstream = await self._connect()
            if upstream is None:
                self.turned_away += 1
                return
            async with upstream, anyio.create_task_group() as group:
                group.start_soon(_pipe, client, upstream, group.cancel_scope)
                group.start_soon(_pipe, upstream, client, group.cancel_scope)

    async def _connect(self) -> anyio.abc.SocketStream | None:
        for _ in range(len(self.ports)):
            port = self.ports[self._turn % len(self.ports)]
            self._turn += 1
            try:
                stream = await anyio.connect_tcp(HOST, port)
            except OSError:
                self.refused[port] += 1
                continue
            self.connections[port] += 1
            return stream
        return None


async def _pipe(
    source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, scope: anyio.CancelScope
) -> None:
    try:
        async for chunk in source:
            await sink.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    finally:
        scope.cancel()  # one side is gone: the connection is over for both


@asynccontextmanager
async def balancing(ports: Sequence[int]) -> AsyncIterator[Balancer]:
    """A balancer listening on a free loopback port until the block ends (upstreams need not
    be up yet: its address is known first, for their FLUXHOOK_PUBLIC_URL)."""
    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    port = listener.extra(SocketAttribute.local_port)  # noqa: S610 (anyio's, not Django's)
    balancer = Balancer(list(ports), url=f"http://{HOST}:{port}")
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, balancer.handle)
        try:
            yield balancer
        finally:
            group.cancel_scope.cancel()
