"""The HTTP clients a process shares, made on first use: importing httpx (~30 ms) and loading the
CA bundle (~20 ms) are what a tick with nothing to send should not pay (cold start)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.egress import EgressPolicy

if TYPE_CHECKING:
    import ssl

    import httpx


class HttpClients:
    """`client` for provider calls and downloads; `notify` for notifications, SSRF-guarded by
    `policy` (unless `notify_transport` replaces the guard) and never following redirects.
    Both share one TLS context. `aclose` closes whichever were made."""

    def __init__(
        self,
        *,
        timeout: float,
        notify_timeout: float,
        policy: EgressPolicy,
        transport: httpx.AsyncBaseTransport | None = None,
        notify_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout = timeout
        self._notify_timeout = notify_timeout
        self._policy = policy
        self._transport = transport
        self._notify_transport = notify_transport
        self._tls: ssl.SSLContext | None = None
        self._client: httpx.AsyncClient | None = None
        self._notify: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx  # on first use: see the module's docstring

            limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
            self._client = httpx.AsyncClient(transport=self._transport, verify=self._tls_context(),
                                             limits=limits, timeout=self._timeout)
        return self._client

    @property
    def notify(self) -> httpx.AsyncClient:
        if self._notify is None:
            import httpx  # on first use: see the module's docstring

            from service.egress_transport import guarded_transport

            transport = self._notify_transport or guarded_transport(self._policy, verify=self._tls_context())
            self._notify = httpx.AsyncClient(transport=transport, follow_redirects=False,
                                             timeout=self._notify_timeout)
        return self._notify

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            import httpx  # on first use: see the module's docstring

            self._tls = httpx.create_ssl_context()
        return self._tls

    async def aclose(self) -> None:
        for client in (self._client, self._notify):
            if client is not None:
                await client.aclose()
