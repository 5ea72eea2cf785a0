"""Replicate: POST /v1/models/{owner}/{name}/predictions, callbacks signed per Standard Webhooks.

Source: shared/providers.md §e1 (replicate.com/docs: predictions lifecycle, webhooks, rate
limits, data retention; replicate/replicate-python: replicate/webhook.py for the signature).
Callbacks are signed with the account's secret (`GET /v1/webhooks/default/secret`), so this
adapter is `AccountSigned`: `service/callback_keys.py` fetches and caches the secret and calls
`verify_signed` before the store is touched. Replicate removes an API prediction's outputs after
an hour, so a finished job's download is due at once (it always is: `Schedule(fetch_at=now)`).
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from service.errors import CallbackRejected, ConfigError, ProviderRejected, ProviderRetryable
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
from service.signing import fresh_timestamp, header
from service.webhook_signing import decode_secret, signature

# `start` and `completed` are always sent when asked for (§e1.3). `output` is left out: a Flux
# model's output is its final image, so an `output` event says nothing `completed` does not, and
# carries no progress. `logs` (tqdm lines) would, but at one event per 500 ms per job.
WEBHOOK_EVENTS = ("start", "completed")

# A signed timestamp may be ±5 minutes off (service/signing.py), as every Standard Webhooks
# reference library allows; Replicate's SDK sets no tolerance.

_STATES = {
    "starting": ProviderState.PENDING,
    "processing": ProviderState.RUNNING,
    "succeeded": ProviderState.READY,
    "failed": ProviderState.FAILED,
    "canceled": ProviderState.CANCELLED,
    "cancelled": ProviderState.CANCELLED,
    # "terminated before it started running", e.g. past a deadline (predictions lifecycle).
    "aborted": ProviderState.FAILED,
}
# How Replicate words a safety-checker refusal in `error` (E005, "flagged as sensitive", or the
# model's own "NSFW content detected"); UNCONFIRMED as a complete list, so anything else is a
# plain failure.
_MODERATION = re.compile(r"\bE005\b|flagged as sensitive|nsfw", re.IGNORECASE)
_PERCENT = re.compile(r"(\d{1,3})%\|")  # the last tqdm bar in `logs`
_RESETS_IN = re.compile(r"resets in ~?(\d{1,5})\s*s", re.IGNORECASE)  # the 429's own words
_FORMATS = {"jpeg": "jpg"}  # Replicate's output_format is webp | jpg | png


@dataclass(frozen=True)
class ReplicateAdapter:
    """Replicate's HTTP API for the black-forest-labs models it hosts."""

    base_url: str
    api_key: str = field(repr=False)
    output_hosts: tuple[str, ...]
    # REPLICATE_WEBHOOK_SECRET: the account's `whsec_` secret, or None to fetch it.
    webhook_secret: str | None = field(default=None, repr=False)
    name: str = "replicate"
    supports_webhooks: bool = True
    submit_idempotent: bool = False  # Replicate documents no idempotency key
    # The secret changes only when the account rotates it; an unknown signature refetches.
    keys_max_age_ms: int = 3_600_000
    # urls.get receives the key, so it is only followed to Replicate's API or the base URL.
    api_hosts: tuple[str, ...] = ("api.replicate.com",)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"}

    def submit_call(self, order: SubmitOrder) -> ProviderCall:
        body: dict[str, Any] = {"input": native_input(order.model, order.input)}
        if order.webhook_url:
            body["webhook"] = order.webhook_url
            body["webhook_events_filter"] = list(WEBHOOK_EVENTS)
        url = f"{self.base_url}/v1/models/{quote(order.model.strip('/'), safe='/')}/predictions"
        return ProviderCall("POST", url, {**self.auth_headers(), "Content-Type": "application/json"},
                            body)

    def parse_submit(self, response: RawResponse, *, now_ms: int) -> Accepted:
        _raise_for_error(response, now_ms=now_ms, what="submit")
        body = response.json_object()
        prediction_id = required_text(body, "id") if body else None
        if body is None or prediction_id is None:
            # It may have been created (and charged); without an id it cannot be followed.
            raise ProviderRejected("submit: 2xx answer without a prediction id", status=response.status)
        urls = body.get("urls")
        get_url = urls.get("get") if isinstance(urls, dict) else None
        return Accepted(prediction_id, get_url if isinstance(get_url, str) else None)

    def status_call(self, provider_job_id: str, polling_url: str | None) -> ProviderCall:
        url = polling_url if polling_url and is_api_url(polling_url, self.base_url, self.api_hosts) \
            else self._prediction_url(provider_job_id)
        return ProviderCall("GET", url, self.auth_headers())

    def parse_status(self, response: RawResponse, *, now_ms: int) -> StatusReport:
        if response.status == 404:
            return StatusReport(ProviderState.NOT_FOUND, message=f"HTTP 404: {error_message(response)}")
        _raise_for_error(response, now_ms=now_ms, what="prediction")
        body = response.json_object()
        if body is None:
            raise ProviderRejected(f"prediction: HTTP {response.status} answer is not a JSON object",
                                   status=response.status)
        return report_from_prediction(body)


    def parse_callback(self, body: bytes) -> StatusReport:
        return report_from_prediction(callback_object(body))

    def cancel_call(self, provider_job_id: str, polling_url: str | None = None) -> ProviderCall | None:
        # urls.cancel is always this URL (§e1.5), so it is rebuilt from the id rather than stored.
        return ProviderCall("POST", f"{self._prediction_url(provider_job_id)}/cancel", self.auth_headers())

    def parse_cancel(self, response: RawResponse, *, now_ms: int) -> bool:
        """True once cancelled (or on its way); False when the prediction had already finished."""
        _raise_for_error(response, now_ms=now_ms, what="cancel")
        body = response.json_object() or {}
        status = body.get("status")
        return status not in ("succeeded", "failed", "aborted")

    # Account-signed callbacks (service/providers/base.py AccountSigned).

    def configured_keys(self) -> CallbackKeys | None:
        if not self.webhook_secret:
            return None
        return CallbackKeys((decode_secret(self.webhook_secret),))  # checked by Settings.parse

    def keys_call(self) -> ProviderCall:
        return ProviderCall("GET", f"{self.base_url}/v1/webhooks/default/secret", self.auth_headers())

    def parse_keys(self, response: RawResponse, *, now_ms: int) -> CallbackKeys:
        _raise_for_error(response, now_ms=now_ms, what="webhook secret")
        body = response.json_object()
        key = _secret_bytes(body.get("key") if body else None)
        if key is None:
            # The message never quotes the answer: it may hold a secret.
            raise ProviderRejected("webhook secret: the answer holds no whsec_ key", status=response.status)
        return CallbackKeys((key,))

    def verify_signed(
        self, headers: Mapping[str, str], body: bytes, keys: CallbackKeys, *, now_ms: int
    ) -> None:
        verify_standard_webhook(headers, body, keys.values, now_ms=now_ms)

    def _prediction_url(self, prediction_id: str) -> str:
        return f"{self.base_url}/v1/predictions/{quote(prediction_id, safe='')}"


def verify_standard_webhook(
    headers: Mapping[str, str], body: bytes, keys: tuple[bytes, ...], *, now_ms: int
) -> None:
    """Return when `webhook-signature` holds a `v1` HMAC of `{id}.{timestamp}.{body}` under one of
    `keys` and the timestamp is within 5 minutes of `now_ms`; raise CallbackRejected otherwise.

    Checks run cheapest first and a stale timestamp is refused before any HMAC, so a captured
    callback replayed later is refused whatever its signature. A well-formed, fresh signature
    that matches no key raises `code="unknown_key"` (the keys may have rotated).
    """
    msg_id = header(headers, "webhook-id")
    timestamp = header(headers, "webhook-timestamp")
    signatures = header(headers, "webhook-signature")
    if not (msg_id and timestamp and signatures):
        raise CallbackRejected("callback is not signed: webhook-id, webhook-timestamp and "
                               "webhook-signature are required", code="missing_signature")
    sent_at = fresh_timestamp(timestamp, now_s=now_ms // 1000, header_name="webhook-timestamp")
    offered = [s for s in signatures.split() if s.startswith("v1,")]
    if not offered:
        raise CallbackRejected("webhook-signature holds no v1 signature", code="malformed_signature")
    for key in keys:
        expected = signature(key, msg_id, sent_at, body)
        # Every offered signature is compared, in constant time each.
        if any(hmac.compare_digest(expected.encode(), s.encode()) for s in offered):
            return
    raise CallbackRejected("webhook-signature matches no signing secret of the account",
                           code="unknown_key")


def native_input(model: str, unified: Mapping[str, Any]) -> dict[str, Any]:
    """The model's `input` from fluxhook's vocabulary (service/catalog/replicate.py).

    `image_url` is Kontext's `input_image` and FLUX.2's `input_images` list; `steps` is
    `num_inference_steps`; a width or height without an aspect ratio needs `"custom"`, which
    is the only ratio under which Replicate reads them. Unset fields are left out.
    """
    out: dict[str, Any] = {}
    for name, value in unified.items():
        if value is None:
            continue
        if name == "image_url":
            if "/flux-2" in model:
                out["input_images"] = [value]
            else:
                out["input_image"] = value
        elif name == "steps":
            out["num_inference_steps"] = value
        elif name == "output_format":
            out[name] = _FORMATS.get(value, value)
        else:
            out[name] = value
    if ("width" in out or "height" in out) and "aspect_ratio" not in out:
        out["aspect_ratio"] = "custom"
    return out


def report_from_prediction(body: Mapping[str, Any]) -> StatusReport:
    """A report from a prediction object: a GET answer or a callback body (the same shape)."""
    prediction_id = required_text(body, "id")
    raw = body.get("status")
    status = raw.strip().lower() if isinstance(raw, str) else ""
    state = _STATES.get(status, ProviderState.PENDING)  # unknown: keep polling, never crash
    if state is ProviderState.READY:
        urls = _output_urls(body.get("output"))
        if urls:
            return StatusReport(state, prediction_id, urls, 1.0)
        why = ("its outputs were removed (Replicate keeps them an hour)" if body.get("data_removed")
               else "no output URL")
        return StatusReport(ProviderState.FAILED, prediction_id, message=f"succeeded with {why}")
    if state is ProviderState.CANCELLED:
        return StatusReport(state, prediction_id, message="canceled at Replicate")
    if state is ProviderState.FAILED:
        error = body.get("error")
        detail = error if isinstance(error, str) and error else (
            json.dumps(error)[:300] if error else "no reason given")
        moderated = _MODERATION.search(detail) is not None
        return StatusReport(ProviderState.MODERATED if moderated else state, prediction_id,
                            message=f"{status}: {detail}"[:500])
    return StatusReport(state, prediction_id, progress=_progress(body.get("logs")))


def _output_urls(output: Any) -> tuple[str, ...]:
    """`output` is one URL (FLUX1.1 [pro], Kontext, FLUX.2) or a list of them ([dev], [schnell])."""
    if isinstance(output, str) and output:
        return (output,)
    if isinstance(output, list):
        return tuple(item for item in output if isinstance(item, str) and item)
    return ()


def _progress(logs: Any) -> float | None:
    if not isinstance(logs, str):
        return None
    found = _PERCENT.findall(logs[-2000:])
    return min(100, int(found[-1])) / 100 if found else None


def _secret_bytes(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return decode_secret(value)
    except ConfigError:
        return None


def _raise_for_error(response: RawResponse, *, now_ms: int, what: str) -> None:
    """The usual classes; a 429 without Retry-After takes its wait from the body's words,
    "Your rate limit resets in ~30s" (§e1.5)."""
    if response.status == 429 and header(response.headers, "retry-after") is None:
        text = error_message(response)
        found = _RESETS_IN.search(text)
        if found:
            raise ProviderRetryable(f"{what}: HTTP 429: {text}", status=429,
                                    retry_after=float(found.group(1)))
    raise_for_error(response, now_ms=now_ms, what=what)
