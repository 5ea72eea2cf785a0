"""Host names and addresses in one canonical form, so a check and a connection see the same host.

`canonical_host` is the one place a destination's host is read, both when a webhook URL is
accepted and when the egress guard connects. It undoes the spellings that make an address look
like something else: upper case, a trailing dot (`127.0.0.1.`), percent-encoding
(`%31%32%37.0.0.1`), the legacy numeric IPv4 forms that getaddrinfo and browsers accept
(`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`; parsed as the WHATWG URL standard's IPv4
parser does) and bracketed IPv6. IPv6 addresses that carry an IPv4 address (mapped, compatible,
6to4, NAT64) are judged by `embedded_ipv4`. Host names must be valid DNS names: labels of
letters, digits and hyphens, at most 63 characters each and 253 in all. Pure: no DNS, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_NAME = 253  # RFC 1035 2.3.4, without the trailing dot
MAX_LABEL = 63
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_NUMBER = re.compile(r"0[x][0-9a-f]*|[0-9]+")  # what makes a label an IPv4 part (WHATWG "ends in a number")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible ::a.b.c.d (RFC 4291 2.5.5.1)


class InvalidHost(ValueError):
    """A host or port no request should go to; `reason` says why, and never holds a secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Host:
    """A host in canonical form: `name` is what to resolve (or the address, written normally);
    `address` is the IP it denotes without DNS, if it is a literal."""

    name: str
    address: IPAddress | None = None


def canonical_host(host: str) -> Host:
    """The canonical form of a URL's host, or InvalidHost."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        return _ipv6(host)
    if "%" in host:
        try:
            host = unquote(host, errors="strict")
        except UnicodeDecodeError:
            raise InvalidHost("host is percent-encoded but not UTF-8") from None
        if "%" in host:
            raise InvalidHost("host is percent-encoded more than once")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidHost("host is not a valid international domain name") from None
    host = host.lower()
    host = host.removesuffix(".")  # one trailing dot: the root of the DNS, same host
    if not host:
        raise InvalidHost("URL has no host")
    labels = host.split(".")
    if _NUMBER.fullmatch(labels[-1]):  # a top-level domain is never a number: this is an IPv4 address
        address = _ipv4(labels)
        return Host(str(address), address)
    _check_name(host, labels)
    return Host(host)


def check_port(port: int | None) -> None:
    """A URL's explicit port, when it has one, must be a real TCP port."""
    if port is not None and not 1 <= port <= 65535:
        raise InvalidHost("port must be between 1 and 65535")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, NAT64, 6to4): the one
    really reached."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):  # not :: or ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.ipv4_mapped or address.sixtofour


def _ipv6(host: str) -> Host:
    if "%" in host:
        raise InvalidHost("IPv6 zone identifiers are not allowed")
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        raise InvalidHost("not a valid IPv6 address") from None
    return Host(str(address), address)


def _ipv4(labels: list[str]) -> ipaddress.IPv4Address:
    """WHATWG URL standard, "IPv4 parser": 1-4 parts, each decimal, 0x-hex or 0-octal; the last
    part fills the remaining bytes (so 127.1 is 127.0.0.1 and 2130706433 is too)."""
    if len(labels) > 4 or not all(_NUMBER.fullmatch(label) for label in labels):
        raise InvalidHost("not a valid IPv4 address")
    numbers = [_ipv4_number(label) for label in labels]
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        raise InvalidHost("not a valid IPv4 address")
    value = last + sum(n << (8 * (3 - i)) for i, n in enumerate(leading))
    return ipaddress.IPv4Address(value)


def _ipv4_number(label: str) -> int:
    if label.startswith("0x"):
        return int(label[2:] or "0", 16)
    if len(label) > 1 and label.startswith("0"):
        if not set(label) <= set("01234567"):
            raise InvalidHost("not a valid IPv4 address")
        return int(label, 8)
    return int(label)


def _check_name(host: str, labels: list[str]) -> None:
    if len(host) > MAX_NAME:
        raise InvalidHost(f"host name is longer than {MAX_NAME} characters")
    for label in labels:
        if len(label) > MAX_LABEL:
            raise InvalidHost(f"a host name label is longer than {MAX_LABEL} characters")
        if not _LABEL.fullmatch(label):
            raise InvalidHost("host name has an empty label or characters other than letters, digits and -")
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                raise InvalidHost("host name has a label that is not valid IDNA") from None
