"""The one place a provider call meets the network; httpx errors become ProviderErrors here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.errors import ProviderOutcomeUnknown, ProviderRetryable
from service.providers.base import ProviderCall, RawResponse

if TYPE_CHECKING:
    import httpx

MAX_RESPONSE_BYTES = 1_048_576  # a status answer is small; never buffer a runaway body


async def send(client: httpx.AsyncClient, call: ProviderCall, *, timeout: float) -> RawResponse:
    """Make one provider call. Transport failures and timeouts are retryable."""
    import httpx  # on the first call: a tick with nothing due calls no provider (cold start)

    try:
        async with client.stream(
            call.method,
            call.url,
            headers=dict(call.headers),
            json=call.json,
            timeout=timeout,
            follow_redirects=False,
        ) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > MAX_RESPONSE_BYTES:
                    raise ProviderRetryable(
                        f"{call.method} {_safe(call.url)}: response larger than "
                        f"{MAX_RESPONSE_BYTES} bytes",
                        status=response.status_code,
                    )
            return RawResponse(response.status_code, dict(response.headers), bytes(body))
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
        # No connection was made, so the provider cannot have seen the request.
        raise ProviderRetryable(f"{call.method} {_safe(call.url)}: {_what(exc)}") from exc
    except httpx.HTTPError as exc:
        # The request may have arrived: a read timeout, a connection dropped mid-answer.
        raise ProviderOutcomeUnknown(f"{call.method} {_safe(call.url)}: {_what(exc)}") from exc


def _what(exc: httpx.HTTPError) -> str:
    import httpx  # loaded already: `send` imported it

    return "timed out" if isinstance(exc, httpx.TimeoutException) else type(exc).__name__


def _safe(url: str) -> str:
    """A URL fit for a log line: no query string (it may carry ids or signatures)."""
    return url.split("?", 1)[0]
