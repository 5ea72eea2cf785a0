"""fal.ai's queue: submit with `fal_webhook`, poll the status and then fetch the result, cancel;
callbacks signed with ED25519 under the account keys of fal's JWKS.

Source: shared/providers.md §e2 (docs.fal.ai model-endpoints/queue, .../webhooks, the queue's
cancel page, model-apis/errors and request-errors). The model id in status, result and cancel
URLs is the submit path without its subpath (`fal-ai/flux-pro/v1.1` -> `fal-ai/flux-pro`); the
submit answer's `status_url`, `response_url` and `cancel_url` already have it right, so fluxhook
keeps `status_url` as the job's polling URL and derives the others from it.

A COMPLETED status carries no output: the result is a second GET of `response_url`. The status
report says so with `result_url` and the poller makes that call (service/poller.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from service.errors import CallbackRejected, ProviderRejected
from service.providers.base import (
    Accepted,
    CallbackKeys,
    ProviderCall,
    ProviderState,
    RawResponse,
    StatusReport,
    SubmitOrder,
    callback_object,
    error_message,
    is_api_url,
    raise_for_error,
    required_text,
)
from service.signing import fresh_timestamp

# Which of the two URLs public implementations use is canonical now is UNCONFIRMED
# (providers.md §e2.3): the other is https://rest.fal.ai/.well-known/jwks.json. FAL_JWKS_URL
# chooses; a wrong one fails loudly (callbacks answered 503 keys_unavailable, jobs finish by
# polling) rather than silently.
FAL_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
KEYS_MAX_AGE_MS = 24 * 3600 * 1000  # "cache the keys for at most 24 h" (§e2.3)

REQUEST_ID = "x-fal-webhook-request-id"
USER_ID = "x-fal-webhook-user-id"
TIMESTAMP = "x-fal-webhook-timestamp"
SIGNATURE = "x-fal-webhook-signature"

_STATES = {
    "IN_QUEUE": ProviderState.PENDING,
    "IN_PROGRESS": ProviderState.RUNNING,
    "COMPLETED": ProviderState.READY,
}
# fluxhook's vocabulary -> fal's input names (each model's page on fal.ai).
_RENAMES = {
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "prompt_upsampling": "enhance_prompt",
    "image_prompt": "image_url",  # ultra's reference image (Redux) is fal's `image_url`
}
# The sizes BFL uses when only one side is given (FluxPro11Inputs): fal's `image_size` object
# needs both.
_DEFAULT_SIZE = {"width": 1024, "height": 768}
MODERATION_TYPES = frozenset({"content_policy_violation"})


@dataclass(frozen=True)
class FalAdapter:
    """fal's queue API (`FAL_QUEUE_URL`, https://queue.fal.run) with account-signed callbacks."""

    base_url: str
    api_key: str = field(repr=False)
    output_hosts: tuple[str, ...]
    jwks_url: str = FAL_JWKS_URL
    name: str = "fal"
    supports_webhooks: bool = True
    submit_idempotent: bool = False
    keys_max_age_ms: int = KEYS_MAX_AGE_MS
    # The queue's own URLs (status_url, response_url, cancel_url) receive the key, so they are
    # only followed to the queue URL's origin or fal's queue host.
    api_hosts: tuple[str, ...] = ("queue.fal.run",)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Key {self.api_key}", "Accept": "application/json"}

    # -- submit, status, cancel --------------------------------------------------------------

    def submit_call(self, order: SubmitOrder) -> ProviderCall:
        url = f"{self.base_url}/{quote(order.model.strip('/'), safe='/')}"
        if order.webhook_url:
            url += "?" + urlencode({"fal_webhook": order.webhook_url})
        headers = {**self.auth_headers(), "Content-Type": "application/json"}
        return ProviderCall("POST", url, headers, native_input(order.input))

    def parse_submit(self, response: RawResponse, *, now_ms: int) -> Accepted:
        raise_for_error(response, now_ms=now_ms, what="submit")
        body = response.json_object()
        request_id = required_text(body, "request_id") if body else None
        if body is None or request_id is None:
            # It may have been queued (and charged); without an id it cannot be followed, and
            # fal has no idempotency key, so a retry could pay twice. Fail loudly instead.
            raise ProviderRejected("submit: 2xx answer without a request_id", status=response.status)
        status_url = body.get("status_url")
        if not isinstance(status_url, str):
            response_url = body.get("response_url")
            status_url = f"{response_url}/status" if isinstance(response_url, str) else None
        if status_url is not None and not is_api_url(status_url, self.base_url, self.api_hosts):
            status_url = None  # a URL the API key must never be sent to is not kept
        return Accepted(request_id, status_url)

    def status_call(self, provider_job_id: str, polling_url: str | None) -> ProviderCall:
        """GET the status URL, or the result URL a COMPLETED status named (`result_url`)."""
        return ProviderCall("GET", self._queue_url(provider_job_id, polling_url), self.auth_headers())

    def parse_status(self, response: RawResponse, *, now_ms: int) -> StatusReport:
        """A status answer (IN_QUEUE, IN_PROGRESS, COMPLETED) or a result answer (the output,
        or the request's error: fal answers a failed request's result with an error status)."""
        if response.status == 404:
            return StatusReport(ProviderState.NOT_FOUND, message=f"HTTP 404: {error_message(response)}")
        failed = _request_failure(response)
        if failed is not None:
            return failed
        raise_for_error(response, now_ms=now_ms, what="status")
        body = response.json_object()
        if body is None:
            raise ProviderRejected(f"status: HTTP {response.status} answer is not a JSON object",
                                   status=response.status)
        status = body.get("status")
        if isinstance(status, str) and status.upper() in _STATES:
            return _report_from_status(body, status.upper())
        return report_from_result(body)

    def cancel_call(self, provider_job_id: str, polling_url: str | None = None) -> ProviderCall | None:
        if polling_url is None or not is_api_url(polling_url, self.base_url, self.api_hosts):
            return None  # no queue URL names the request's model: nothing to send it to
        return ProviderCall("PUT", f"{self._queue_url(provider_job_id, polling_url, result=True)}/cancel",
                            self.auth_headers())

    def parse_cancel(self, response: RawResponse, *, now_ms: int) -> bool:
        """The queue's four answers (fal.ai/docs/inference-api/queue/cancel): OK (removed from
        the queue) and CANCELLATION_REQUESTED (the runner was told to stop) are a cancel;
        ALREADY_COMPLETED is too late; NOT_FOUND means fal does not know the request."""
        body = response.json_object()
        answer = body.get("status") if body else None
        if answer in ("OK", "CANCELLATION_REQUESTED"):
            return True
        if answer == "ALREADY_COMPLETED":
            return False
        if answer == "NOT_FOUND" or response.status == 404:
            raise ProviderRejected("cancel: fal does not know the request (NOT_FOUND)",
                                   status=response.status)
        raise_for_error(response, now_ms=now_ms, what="cancel")
        return True  # a 2xx in any other words: fal took the cancel

    # -- callbacks -----------------------------------------------------------------------------


    def parse_callback(self, body: bytes) -> StatusReport:
        return report_from_callback(callback_object(body))

    def configured_keys(self) -> CallbackKeys | None:
        return None  # fal publishes its keys; there is no account secret to configure

    def keys_call(self) -> ProviderCall:
        # A public document: the API key is not sent to the JWKS host.
        return ProviderCall("GET", self.jwks_url, {"Accept": "application/json"})

    def parse_keys(self, response: RawResponse, *, now_ms: int) -> CallbackKeys:
        raise_for_error(response, now_ms=now_ms, what="jwks")
        return CallbackKeys(ed25519_keys(response.json_object()))

    def verify_signed(
        self, headers: Mapping[str, str], body: bytes, keys: CallbackKeys, *, now_ms: int
    ) -> None:
        verify_fal_signature(headers, body, keys.values, now_s=now_ms // 1000)

    # -- helpers ------------------------------------------------------------------------------

    def _queue_url(self, request_id: str, polling_url: str | None, *, result: bool = False) -> str:
        """The polling URL as given (status or result), or with `result` the request's own URL
        (status URL without `/status`): fal's URLs carry the model id, which the id alone does
        not, so a request fluxhook has no URL for cannot be asked about."""
        if polling_url is None or not is_api_url(polling_url, self.base_url, self.api_hosts):
            raise ProviderRejected(f"fal request {request_id}: no queue URL known for it (the "
                                   "model id is part of every queue URL)")
        if result and polling_url.endswith("/status"):
            return polling_url.removesuffix("/status")
        return polling_url


def native_input(values: Mapping[str, Any]) -> dict[str, Any]:
    """fluxhook's vocabulary in fal's words: `image_size` from width and height, the safety
    tolerance as fal's string enum ("1".."6"), unset fields left out."""
    body: dict[str, Any] = {}
    size: dict[str, int] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key in ("width", "height"):
            size[key] = value
        elif key == "safety_tolerance":
            body[key] = str(value)
        else:
            body[_RENAMES.get(key, key)] = value
    if size:
        body["image_size"] = {**_DEFAULT_SIZE, **size}
    return body


def ed25519_keys(jwks: Mapping[str, Any] | None) -> tuple[bytes, ...]:
    """The raw 32-byte public keys of a JWKS's OKP/Ed25519 entries (`x`, base64url); others
    are ignored. ProviderRejected when none is left."""
    entries = jwks.get("keys") if jwks else None
    keys: list[bytes] = []
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict) or entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
            continue
        x = entry.get("x")
        if not isinstance(x, str):
            continue
        try:
            raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            keys.append(raw)
    if not keys:
        raise ProviderRejected("jwks: no Ed25519 key in fal's JWKS")
    return tuple(keys)


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """What fal signs: the three headers and the body's hex SHA-256, joined by newlines."""
    return "\n".join((request_id, user_id, timestamp, hashlib.sha256(body).hexdigest())).encode()


def verify_fal_signature(
    headers: Mapping[str, str], body: bytes, keys: tuple[bytes, ...], *, now_s: int
) -> None:
    """Return when one of `keys` signed this callback within ±5 minutes; else CallbackRejected.

    A well-formed, fresh signature no key verifies raises `code="unknown_key"`, so the keyring
    fetches the JWKS once more (fal may have rotated its key).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    values = {name: lower.get(name, "").strip() for name in (REQUEST_ID, USER_ID, TIMESTAMP, SIGNATURE)}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise CallbackRejected(f"fal callback without {', '.join(missing)}", code="missing_signature")
    timestamp = values[TIMESTAMP]
    fresh_timestamp(timestamp, now_s=now_s, header_name="X-Fal-Webhook-Timestamp")
    try:
        signature = bytes.fromhex(values[SIGNATURE])
    except ValueError:
        raise CallbackRejected("X-Fal-Webhook-Signature is not hex", code="bad_signature") from None
    if len(signature) != 64:
        raise CallbackRejected("X-Fal-Webhook-Signature is not an Ed25519 signature",
                               code="bad_signature")
    # Imported here, not at start-up: ~8 ms a `fluxhook tick` with nothing due should not pay.
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    message = signed_message(values[REQUEST_ID], values[USER_ID], timestamp, body)
    for key in keys:
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
        except (InvalidSignature, ValueError):
            continue
        return
    raise CallbackRejected("no key of fal's JWKS verifies X-Fal-Webhook-Signature", code="unknown_key")


def report_from_callback(body: Mapping[str, Any]) -> StatusReport:
    """A webhook body: `status` OK with the result as `payload`, or ERROR with `error`.

    `payload: null` with `payload_error` means the result could not be put in the webhook, not
    that the request failed: the report stays open and polling fetches the result.
    """
    request_id = required_text(body, "request_id")
    status = body.get("status")
    payload = body.get("payload")
    if status == "ERROR":
        return _failure(request_id, body.get("error"), payload)
    if status == "OK":
        if isinstance(payload, dict):
            report = report_from_result(payload)
            return StatusReport(report.state, request_id, report.output_urls, report.progress,
                                report.message)
        problem = body.get("payload_error")
        return StatusReport(ProviderState.RUNNING, request_id, message=(
            f"completed, but the webhook carries no result ({_text(problem)}): polling fetches it"))
    return StatusReport(ProviderState.PENDING, request_id)  # unknown words: polling decides


def report_from_result(body: Mapping[str, Any]) -> StatusReport:
    """A result (`{"images": [{"url", ...}], "seed", "has_nsfw_concepts"}`) as a report.

    Every image flagged by fal's safety checker (it sends black images then) is moderation.
    """
    urls = tuple(image["url"] for image in body.get("images") or ()
                 if isinstance(image, dict) and isinstance(image.get("url"), str) and image["url"])
    if not urls:
        image = body.get("image")
        if isinstance(image, dict) and isinstance(image.get("url"), str):
            urls = (image["url"],)
    flags = body.get("has_nsfw_concepts")
    if urls and isinstance(flags, list) and flags and all(flag is True for flag in flags):
        return StatusReport(ProviderState.MODERATED,
                            message="content moderated: fal's safety checker flagged every image")
    if not urls:
        return StatusReport(ProviderState.FAILED, message="completed without an output image URL")
    return StatusReport(ProviderState.READY, None, urls, 1.0)


def _report_from_status(body: Mapping[str, Any], status: str) -> StatusReport:
    request_id = required_text(body, "request_id")
    state = _STATES[status]
    if state is not ProviderState.READY:
        return StatusReport(state, request_id)
    if body.get("error"):  # newer status answers name a failed request's error
        return _failure(request_id, body.get("error"), body)
    response_url = body.get("response_url")
    if not isinstance(response_url, str) or not response_url:
        raise ProviderRejected("status: COMPLETED without a response_url to fetch the result from")
    # Not READY yet: the outputs are in the result, which the poller fetches next.
    return StatusReport(ProviderState.RUNNING, request_id, result_url=response_url)


def _request_failure(response: RawResponse) -> StatusReport | None:
    """A result answer that is the request's own failure, not a failed call: a model error
    (400/422 with a `detail` list of typed errors) or a request error (`error_type`, also in
    X-Fal-Error-Type: request_timeout, runner_disconnected...; docs model-apis/request-errors).
    A 429 or 5xx without `error_type` is the queue's trouble: the call is retried."""
    if 200 <= response.status < 300 or response.status in (401, 403, 404, 429):
        return None
    body = response.json_object() or {}
    error_type = body.get("error_type") or response.headers.get("x-fal-error-type")
    if (response.status < 500 and "detail" in body) or error_type:
        return _failure(None, error_type or f"HTTP {response.status}", body)
    return None


def _failure(request_id: str | None, error: Any, payload: Any) -> StatusReport:
    detail = payload.get("detail") if isinstance(payload, dict) else None
    types = {item.get("type") for item in detail if isinstance(item, dict)} \
        if isinstance(detail, list) else set()
    message = "; ".join(p for p in (_text(error), _detail_text(detail)) if p) or "failed at fal"
    state = ProviderState.MODERATED if types & MODERATION_TYPES else ProviderState.FAILED
    return StatusReport(state, request_id, message=message[:500])


def _detail_text(detail: Any) -> str:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                msg = _text(item.get("msg") or item.get("type"))
                parts.append(f"{loc}: {msg}" if loc else msg)
        return "; ".join(parts)
    return ""


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)[:200]
