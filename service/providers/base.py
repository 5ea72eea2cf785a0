"""What every provider adapter is: pure translators around one thin HTTP call.

An adapter turns a job into a `ProviderCall` (pure data), and a provider's raw answer
(`RawResponse`) into a `Accepted` or `StatusReport` (pure data). `providers.transport.send`
is the only code that touches the network. Error answers are classified here, once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from service.backoff import parse_retry_after
from service.errors import CallbackRejected, JsonRefused, ProviderRejected, ProviderRetryable
from service.signing import Verdict
from service.strict_json import loads
from service.urls import host_matches


@dataclass(frozen=True)
class ProviderCall:
    method: str
    url: str
    # Out of the repr: the headers carry the API key, a submit's body the webhook secret and the
    # callback URL with its token.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    json: Any = field(default=None, repr=False)

    def __repr__(self) -> str:
        # Without the query string: it may carry a credential (fal's `fal_webhook` is the
        # callback URL, token included), as transport.py keeps it out of its messages.
        return f"ProviderCall(method={self.method!r}, url={self.url.split('?', 1)[0]!r})"


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json_object(self) -> dict[str, Any] | None:
        """The body as a JSON object, or None when it is not one (an HTML 502, say) or breaks
        the strict rules (NaN, lone surrogates...): nothing a provider says is stored unchecked."""
        try:
            value = loads(self.body)
        except JsonRefused:
            return None
        return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class SubmitOrder:
    """Everything an adapter needs to submit one job."""

    job_id: str
    model: str
    input: Mapping[str, Any]
    webhook_url: str | None = field(repr=False)  # its path carries the callback token
    webhook_secret: str | None = field(repr=False)


@dataclass(frozen=True)
class Accepted:
    provider_job_id: str
    polling_url: str | None = None


class ProviderState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"
    MODERATED = "moderated"
    NOT_FOUND = "not_found"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class StatusReport:
    state: ProviderState
    provider_job_id: str | None = None
    output_urls: tuple[str, ...] = ()
    progress: float | None = None
    message: str | None = None
    # Set when the provider said "done" without the outputs and named where they are (fal's
    # COMPLETED status and its response_url): the poller asks `status_call(id, result_url)`
    # once more and takes that report instead.
    result_url: str | None = None


class Adapter(Protocol):
    """One provider protocol. Every method is pure."""

    @property
    def name(self) -> str: ...

    @property
    def output_hosts(self) -> tuple[str, ...]: ...

    @property
    def supports_webhooks(self) -> bool: ...

    @property
    def submit_idempotent(self) -> bool:
        """True when a repeated submit returns the task the first one created (an idempotency
        key), so a submit whose answer was lost can simply be sent again."""
        ...

    def submit_call(self, order: SubmitOrder) -> ProviderCall: ...

    def parse_submit(self, response: RawResponse, *, now_ms: int) -> Accepted: ...

    def status_call(self, provider_job_id: str, polling_url: str | None) -> ProviderCall: ...

    def parse_status(self, response: RawResponse, *, now_ms: int) -> StatusReport: ...

    def parse_callback(self, body: bytes) -> StatusReport: ...

    def cancel_call(self, provider_job_id: str, polling_url: str | None = None) -> ProviderCall | None:
        """The provider's cancel request, or None when it has no cancel endpoint. `polling_url`
        is the job's, for a provider whose URLs carry more than the task id (fal's model id)."""
        ...

    def parse_cancel(self, response: RawResponse, *, now_ms: int) -> bool:
        """True when the provider cancelled the job; False when it refused (already running)."""
        ...


@runtime_checkable
class JobSigned(Protocol):
    """An adapter whose callbacks carry (or may lack) a signature made with the job's own
    webhook secret, which fluxhook sent with the submit (BFL and its resellers)."""

    def verify_callback(
        self, headers: Mapping[str, str], body: bytes, secret: str | None
    ) -> Verdict:
        """VERIFIED when a signature proves the sender, UNSIGNED when there is none (a hint,
        confirmed by polling); raise CallbackRejected (401) for one present but wrong."""
        ...


@dataclass(frozen=True)
class CallbackKeys:
    """Verification material a provider publishes once for every callback of an account
    (Replicate's signing secret, fal's JWKS keys). Opaque to all but the adapter that made it."""

    values: tuple[bytes, ...] = field(repr=False)


@runtime_checkable
class AccountSigned(Protocol):
    """An adapter whose callbacks are signed with account-wide keys fetched from the provider
    (a documented scheme with a timestamp: there is no "unsigned hint", a callback is verified
    or refused). Every method is pure; `service/callback_keys.py` fetches and caches the keys,
    and verifies each callback before the store is touched."""

    @property
    def name(self) -> str: ...

    @property
    def keys_max_age_ms(self) -> int:
        """How long fetched keys may be used before they are fetched again."""
        ...

    def configured_keys(self) -> CallbackKeys | None:
        """Keys given in the settings (never fetched then), or None to fetch them."""
        ...

    def keys_call(self) -> ProviderCall: ...

    def parse_keys(self, response: RawResponse, *, now_ms: int) -> CallbackKeys:
        """The keys in an answer to `keys_call`; raises a ProviderError for an error answer."""
        ...

    def verify_signed(
        self, headers: Mapping[str, str], body: bytes, keys: CallbackKeys, *, now_ms: int
    ) -> None:
        """Return when the raw body is signed by one of `keys` within the allowed clock skew;
        raise CallbackRejected (401) otherwise. A well-formed, fresh signature that matches no
        key raises it with `code="unknown_key"`: the keys may have rotated, so the caller
        fetches them once more and tries again."""
        ...


def raise_for_error(response: RawResponse, *, now_ms: int, what: str) -> None:
    """Classify a non-2xx answer: 429 and 5xx are retryable, any other status is permanent."""
    if 200 <= response.status < 300:
        return
    message = f"{what}: HTTP {response.status}: {error_message(response)}"
    if response.status == 429 or response.status >= 500 or response.status == 408:
        retry_after = parse_retry_after(response.headers.get("retry-after"), now_ms=now_ms)
        raise ProviderRetryable(message, status=response.status, retry_after=retry_after)
    raise ProviderRejected(message, status=response.status)


def error_message(response: RawResponse, *, limit: int = 300) -> str:
    """The provider's own words about an error, whatever shape its body has."""
    body = response.json_object()
    if body is not None:
        for key in ("error", "detail", "message", "msg"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("msg") or json.dumps(value)
            if isinstance(value, list) and value:
                value = "; ".join(_detail_text(v) for v in value)
            if isinstance(value, str) and value:
                return value[:limit]
        return json.dumps(body)[:limit]
    text = response.body[:limit].decode("utf-8", "replace").strip()
    return " ".join(text.split()) or "(empty body)"


def _detail_text(item: Any) -> str:
    if isinstance(item, dict):
        loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
        msg = item.get("msg") or item.get("message") or ""
        return f"{loc}: {msg}" if loc else str(msg)
    return str(item)


def callback_object(body: bytes) -> dict[str, Any]:
    """A callback body as a JSON object; CallbackRejected (400) when it is not one, or holds a
    value the strict parser refuses (the detail names it)."""
    try:
        value = loads(body)
    except JsonRefused as exc:
        refused = exc.as_api_error()
        raise CallbackRejected(f"callback body is not acceptable JSON: {exc}", code="malformed_callback",
                               status_code=400, details=refused.details) from exc
    if not isinstance(value, dict):
        raise CallbackRejected("callback body is not a JSON object", code="malformed_callback",
                               status_code=400)
    return value


def required_text(body: Mapping[str, Any], *keys: str) -> str | None:
    """The first of `keys` holding a non-empty string (providers disagree on names)."""
    for key in keys:
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def is_api_url(url: str, base_url: str, api_hosts: tuple[str, ...]) -> bool:
    """Whether a URL a provider handed back (a polling URL) may receive the API key: below the
    base URL (its origin: scheme, host and port; and its path), or https to one of the
    provider's API hosts."""
    parts, base = urlsplit(url), urlsplit(base_url)
    host = (parts.hostname or "").lower()
    try:
        same_origin = (parts.scheme, host, parts.port) == (
            base.scheme, (base.hostname or "").lower(), base.port)
    except ValueError:  # a malformed port
        return False
    if same_origin and parts.path.startswith(base.path.rstrip("/") + "/"):
        return True
    return parts.scheme == "https" and any(host_matches(host, p) for p in api_hosts)
