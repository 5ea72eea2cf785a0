"""Where outbound webhooks may go: an SSRF guard checked on the addresses actually connected to.

A user-supplied webhook URL must not reach loopback, private networks or the cloud metadata
service. Checking the URL alone is not enough: a name can resolve to a public address when it
is checked and to 127.0.0.1 when it is connected to (DNS rebinding). So `guarded_transport`
(service/egress_transport.py) resolves each host itself, keeps only the addresses the policy
allows, and dials those IPs; `check_url` is only the early, friendly refusal for IP literals.
(Standard Webhooks and Svix both recommend this; see /work/shared/webhooks.md sections 1-2.)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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


def refusal_reason(address: IPAddress) -> str | None:
    """Why the default policy refuses `address`, or None if it is a public address."""
    inner = embedded_ipv4(address)
    if inner is not None:
        reason = refusal_reason(inner)
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
        return refusal_reason(address) is None

    def check_url(self, url: str) -> None:
        """Refuse a submitted webhook URL early: wrong scheme, no host, credentials, a bad port
        or host name, a private IP however it is spelled.

        Host names pass here; they are checked on every connection by `guarded_transport`.
        Parsed with httpx, the parser that will send the request, and its host read by
        `canonical_host` as the guard reads it when connecting, so the two cannot disagree.
        """
        import httpx  # here, not at the top: a tick reads the policy but checks no URL (cold start)

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
        canonical = canonical_destination(host, parsed.port)
        address = canonical.address
        if address is not None and not self.address_allowed(address):
            raise DestinationRefused(host, address, refusal_reason(address) or "not allowed")

    def host_allowed(self, host: str) -> bool:
        return any(host_matches(host, pattern) for pattern in self.allowed_hosts)


def _is_numeric_host(item: str) -> bool:
    return item.rstrip(".").rsplit(".", 1)[-1].isdigit()  # a TLD is never all digits


def _is_host_pattern(item: str) -> bool:
    labels = item.rstrip(".").removeprefix("*.").split(".")
    return all(0 < len(label) < 64 and label.replace("-", "").isalnum() and label.isascii()
               and not label.startswith("-") and not label.endswith("-") for label in labels)


def canonical_destination(host: str, port: int | None) -> Host:
    """`host` as `canonical_host` reads it, or the refusal of a host or port nothing may reach."""
    try:
        check_port(port)
        return canonical_host(host)
    except InvalidHost as exc:
        raise DestinationRefused(host, None, exc.reason) from None


def refused_cause(exc: BaseException) -> DestinationRefused | None:
    """The DestinationRefused behind an httpx error, if any: a refused destination is permanent,
    unlike the connect error it arrives as. Walks __cause__/__context__."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DestinationRefused):
            return current
        # The connect error a refusal leaves the transport as (egress_transport.py
        # RefusedConnection) carries it, since httpcore erases its cause.
        refused = getattr(current, "refused", None)
        if isinstance(refused, DestinationRefused):
            return refused
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
