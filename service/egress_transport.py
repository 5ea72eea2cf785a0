"""The SSRF guard's transport: an httpx transport that resolves each webhook host itself and
dials only the addresses the egress policy allows (service/egress.py says why).

Apart from the policy so that parsing FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS (every process, at
start) does not import httpx: a tick with nothing to deliver never does (cold start).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore
import httpx

from service.egress import (
    DestinationRefused,
    EgressPolicy,
    Resolver,
    canonical_destination,
    refusal_reason,
)
from service.hosts import Host, IPAddress


class RefusedConnection(httpcore.ConnectError):
    """How a refusal leaves the backend: a connect error (httpx chains it as the cause of its own)
    carrying the refusal as an attribute, since httpcore's pool re-raises with `raise exc from
    None` (httpcore 1.0 _async/connection_pool.py) and so erases any __cause__ set here."""

    def __init__(self, refused: DestinationRefused) -> None:
        super().__init__(str(refused))
        self.refused = refused


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The default resolver: the system's getaddrinfo, run in a worker thread by anyio."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0])) for info in infos))


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolve, filter by policy, then dial the chosen IP with the wrapped backend.

    Only the TCP connect sees the IP: httpcore passes the URL's host name to `start_tls` as
    `server_hostname` (httpcore/_async/connection.py, `_connect`), and the Host header comes
    from the request, so SNI, certificate checks and virtual hosts are unchanged.
    """

    def __init__(self, policy: EgressPolicy, resolver: Resolver, inner: httpcore.AsyncNetworkBackend):
        self._policy = policy
        self._resolver = resolver
        self._inner = inner

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        deadline = None if timeout is None else anyio.current_time() + timeout
        try:
            canonical = canonical_destination(host, port)  # as check_url read it when the URL was accepted
        except DestinationRefused as exc:
            raise RefusedConnection(exc) from None
        addresses = await self._addresses(canonical, port, timeout)
        if self._policy.host_allowed(canonical.name):  # the operator vouches for the name, not the address
            allowed = addresses
        else:
            allowed = [address for address in addresses if self._policy.address_allowed(address)]
        if not allowed:
            reason = refusal_reason(addresses[0]) or "not allowed"
            raise RefusedConnection(DestinationRefused(host, addresses[0], reason))
        error: httpcore.ConnectError | None = None
        for address in allowed:  # in resolver order, like the OS would; one shared deadline
            remaining = None if deadline is None else max(deadline - anyio.current_time(), 0.0)
            try:
                return await self._inner.connect_tcp(str(address), port, remaining, local_address,
                                                     socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None
        raise error

    async def _addresses(self, canonical: Host, port: int, timeout: float | None) -> list[IPAddress]:
        if canonical.address is not None:
            return [canonical.address]  # a literal, however spelled: no DNS
        host = canonical.name
        try:
            with anyio.fail_after(timeout):
                addresses = await self._resolver(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:  # socket.gaierror: unknown name, no network
            raise httpcore.ConnectError(f"resolving {host} failed: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolved to no addresses")
        return addresses

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedConnection(DestinationRefused("", None, "unix sockets are not webhook destinations"))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(
    policy: EgressPolicy, *, resolver: Resolver | None = None, **transport_kwargs: Any
) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every TCP connection goes only to addresses `policy` allows.

    Environment proxies are not a concern here: httpx reads them in the client, and only when
    no transport is given. `retries=` re-resolves and re-checks on each attempt.
    """
    for key in ("proxy", "uds"):
        if transport_kwargs.get(key) is not None:
            # A proxy or unix socket would be dialled instead of the destination, unchecked.
            raise TypeError(f"guarded_transport does not support {key}=")
    transport = httpx.AsyncHTTPTransport(**transport_kwargs)
    # httpx 0.28 offers no network_backend argument, so install ours on the pool it built
    # (`transport._pool._network_backend`, which each new connection copies). Rebuilding the
    # pool instead would mean re-deriving httpx's SSL context and limits: more private surface.
    # Refuse loudly if an upgrade renames either attribute rather than run unguarded.
    pool = getattr(transport, "_pool", None)
    if type(pool) is not httpcore.AsyncConnectionPool or not hasattr(pool, "_network_backend"):
        raise RuntimeError("cannot install the egress guard: httpx/httpcore internals changed")
    pool._network_backend = _GuardedBackend(policy, resolver or resolve, httpcore.AnyIOBackend())
    return transport
