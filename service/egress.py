"""Where outbound webhooks may go: an SSRF guard checked on the addresses actually connected to.

A user-supplied webhook URL must not reach loopback, private networks or the cloud metadata
service. Checking the URL alone is not enough: a name can resolve to a public address when it
is checked and to 127.0.0.1 when it is connected to (DNS rebinding). So `guarded_transport`
resolves each host itself, keeps only the addresses the policy allows, and dials those IPs;
`check_url` is only the early, friendly refusal for IP literals. (Standard Webhooks and Svix
both recommend this; see /work/shared/webhooks.md sections 1-2.)
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import httpcore
import httpx

from service.errors import FluxhookError
from service.hosts import Host, InvalidHost, IPAddress, canonical_host, check_port, embedded_ipv4
from service.urls import host_matches

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

_net = ipaddress.ip_network

# Checked in order, so the more specific label (cloud metadata) wins. Written out rather than
# taken from `ipaddress.is_global`, whose lists changed between 3.11 patch releases.
_REFUSED: tuple[tuple[IPNetwork, str], ...] = tuple((_net(cidr), label) for cidr, label in (
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space"),  # carrier-grade NAT; also Alibaba's metadata
    ("127.0.0.0/8", "loopback"),
    ("169.254.169.254/32", "cloud metadata"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    *((cidr, "reserved") for cidr in ("192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24",
                                      "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24")),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # includes 255.255.255.255
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fd00:ec2::254/128", "cloud metadata"),
    ("fc00::/7", "private"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
    # Inside global unicast (2000::/3) but not public: IETF protocol assignments (Teredo,
    # benchmarking, ORCHID) and the documentation prefixes.
    *((cidr, "reserved") for cidr in ("2001::/23", "2001:db8::/32", "3fff::/20")),
))
_GLOBAL_UNICAST = _net("2000::/3")
_LOOPBACK = (_net("127.0.0.0/8"), _net("::1/128"))
_PRIVATE = (_net("10.0.0.0/8"), _net("172.16.0.0/12"), _net("192.168.0.0/16"), _net("fc00::/7"))


def _refusal_reason(address: IPAddress) -> str | None:
    """Why the default policy refuses `address`, or None if it is a public address."""
    inner = embedded_ipv4(address)
    if inner is not None:
        reason = _refusal_reason(inner)
        return f"{reason} (embedded in {address})" if reason else None
    for network, label in _REFUSED:
        if address in network:
            return label
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST:
        return "reserved"  # everything outside 2000::/3 is unassigned or special-purpose
    return None


class DestinationRefused(FluxhookError):
    """A webhook destination the egress policy does not allow. Carries no URL, so no secrets."""

    def __init__(self, host: str, address: IPAddress | None, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        where = host if address is None or str(address) == host else f"{host} ({address})"
        super().__init__(f"webhook destination {where or '(none)'} refused: {reason}")


class _RefusedConnection(httpcore.ConnectError):
    """How a refusal leaves the backend: a connect error (httpx chains it as the cause of its own)
    carrying the refusal as an attribute, since httpcore's pool re-raises with `raise exc from
    None` (httpcore 1.0 _async/connection_pool.py) and so erases any __cause__ set here."""

    def __init__(self, refused: DestinationRefused) -> None:
        super().__init__(str(refused))
        self.refused = refused


@dataclass(frozen=True)
class EgressPolicy:
    """Public addresses are always allowed; these exceptions allow some that are not."""

    allowed: tuple[IPNetwork, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # exact lower-case names or "*.example.com"

    @classmethod
    def from_setting(cls, value: str | None) -> EgressPolicy:
        """Parse FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS: CIDRs, IPs, host names, loopback, private."""
        networks: list[IPNetwork] = []
        hosts: list[str] = []
        for raw in (value or "").split(","):
            item = raw.strip().lower()
            if not item:
                continue
            if item in ("loopback", "private"):
                networks.extend(_LOOPBACK if item == "loopback" else _PRIVATE)
                continue
            try:
                # strict: "10.0.0.1/8" is more likely a typo than a wish for all of 10/8.
                networks.append(ipaddress.ip_network(item))
                continue
            except ValueError as exc:
                if any(ch in item for ch in "/:") or _is_numeric_host(item):
                    raise ValueError(f"FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS: {raw.strip()!r}: {exc}") from None
            if not _is_host_pattern(item):
                raise ValueError(f"FLUXHOOK_ALLOW_PRIVATE_DESTINATIONS: {raw.strip()!r} is not a CIDR, "
                                 "IP address, host name, 'loopback' or 'private'")
            hosts.append(item.rstrip("."))
        return cls(allowed=tuple(dict.fromkeys(networks)), allowed_hosts=tuple(dict.fromkeys(hosts)))

    def address_allowed(self, address: IPAddress) -> bool:
        # An allowed network also allows its IPv6-embedded forms: ::ffff:127.0.0.1 is loopback.
        inner = embedded_ipv4(address)
        candidates = [address] if inner is None else [address, inner]
        if any(candidate in network for candidate in candidates for network in self.allowed):
            return True
        return _refusal_reason(address) is None

    def check_url(self, url: str) -> None:
        """Refuse a submitted webhook URL early: wrong scheme, no host, credentials, a bad port
        or host name, a private IP however it is spelled.

        Host names pass here; they are checked on every connection by `guarded_transport`.
        Parsed with httpx, the parser that will send the request, and its host read by
        `canonical_host` as the guard reads it when connecting, so the two cannot disagree.
        """
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            raise DestinationRefused("", None, "not a valid URL") from None
        host = parsed.raw_host.decode("ascii")  # what the connection will be given (IDNA-encoded)
        if parsed.scheme not in ("http", "https"):
            raise DestinationRefused(host, None, "scheme must be http or https")
        if not host:
            raise DestinationRefused(host, None, "URL has no host")
        if parsed.userinfo:
            raise DestinationRefused(host, None, "URL must not contain credentials")
        canonical = _canonical(host, parsed.port)
        address = canonical.address
        if address is not None and not self.address_allowed(address):
            raise DestinationRefused(host, address, _refusal_reason(address) or "not allowed")

    def _host_allowed(self, host: str) -> bool:
        return any(host_matches(host, pattern) for pattern in self.allowed_hosts)


def _is_numeric_host(item: str) -> bool:
    return item.rstrip(".").rsplit(".", 1)[-1].isdigit()  # a TLD is never all digits


def _is_host_pattern(item: str) -> bool:
    labels = item.rstrip(".").removeprefix("*.").split(".")
    return all(0 < len(label) < 64 and label.replace("-", "").isalnum() and label.isascii()
               and not label.startswith("-") and not label.endswith("-") for label in labels)


def _canonical(host: str, port: int | None) -> Host:
    """`host` as `canonical_host` reads it, or the refusal of a host or port nothing may reach."""
    try:
        check_port(port)
        return canonical_host(host)
    except InvalidHost as exc:
        raise DestinationRefused(host, None, exc.reason) from None


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
            canonical = _canonical(host, port)  # as check_url read it when the URL was accepted
        except DestinationRefused as exc:
            raise _RefusedConnection(exc) from None
        addresses = await self._addresses(canonical, port, timeout)
        if self._policy._host_allowed(canonical.name):  # the operator vouches for the name, not the address
            allowed = addresses
        else:
            allowed = [address for address in addresses if self._policy.address_allowed(address)]
        if not allowed:
            reason = _refusal_reason(addresses[0]) or "not allowed"
            raise _RefusedConnection(DestinationRefused(host, addresses[0], reason))
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
        raise _RefusedConnection(DestinationRefused("", None, "unix sockets are not webhook destinations"))

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


def refused_cause(exc: BaseException) -> DestinationRefused | None:
    """The DestinationRefused behind an httpx error, if any: a refused destination is permanent,
    unlike the connect error it arrives as. Walks __cause__/__context__."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DestinationRefused):
            return current
        if isinstance(current, _RefusedConnection):
            return current.refused
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
