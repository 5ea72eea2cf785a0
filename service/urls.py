"""Which URLs fluxhook will fetch from: a pure policy, checked on every hop."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from service.errors import OutputRejected


def host_matches(host: str, pattern: str) -> bool:
    """`*.bfl.ai` matches any subdomain of bfl.ai (not bfl.ai itself); others match exactly."""
    host = host.lower().rstrip(".")
    pattern = pattern.lower().strip()
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_download_url(url: str, allowed_hosts: tuple[str, ...]) -> None:
    """Raise OutputRejected unless `url` is https (or http on loopback) to an allowed host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host:
        raise OutputRejected(f"output URL has no host: {url[:100]!r}")
    if not any(host_matches(host, pattern) for pattern in allowed_hosts):
        raise OutputRejected(f"output host {host!r} is not an expected host for this provider")
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and is_loopback_host(host):
        return
    raise OutputRejected(f"output URL must be https (got {parts.scheme!r} for {host!r})")
