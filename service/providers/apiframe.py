"""Apiframe v2: POST /v2/images/generate, GET /v2/jobs/{id}, webhooks signed with the API key.

Source: docs-v2.apiframe.ai (images/flux pages, jobs/get, webhooks), summarised in
shared/providers.md §c. The signature's encoding and HMAC key form are undocumented, so every
plausible variant is accepted; the job's status endpoint stays the authority.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from service.errors import CallbackRejected, ProviderRejected, ProviderRetryable
from service.providers.base import (
    Accepted,
    ProviderCall,
    ProviderState,
    RawResponse,
    StatusReport,
    SubmitOrder,
    callback_object,
    raise_for_error,
    required_text,
)
from service.providers.bfl import output_urls
from service.signing import Verdict, header, hmac_sha256

# Every event the docs name (§c.1); `progress` feeds the job's progress, never its outcome.
WEBHOOK_EVENTS = ("progress", "completed", "failed")

# Unified fields that are not model parameters. `image_url` (an image to edit) has no
# documented fluxParams counterpart: Apiframe's Flux pages list only `image_prompt`.
_TOP_LEVEL = frozenset({"prompt", "image_url"})
_FORMATS = {"jpeg": "jpg"}  # Apiframe spells it jpg (fluxParams.output_format: jpg|png|webp)

_STATES = {
    "queued": ProviderState.PENDING,
    "pending": ProviderState.PENDING,
    "processing": ProviderState.RUNNING,
    "running": ProviderState.RUNNING,
    "completed": ProviderState.READY,
    "failed": ProviderState.FAILED,
    # Not documented (§c.5 finds no cancel), but a cancelled job must not be polled forever.
    "cancelled": ProviderState.CANCELLED,
    "canceled": ProviderState.CANCELLED,
}
_EVENT_STATES = {
    "progress": ProviderState.RUNNING,
    "completed": ProviderState.READY,
    "failed": ProviderState.FAILED,
}
_HEX_MAC = re.compile(r"^[0-9a-fA-F]{64}$")
_BASE64_MAC = re.compile(r"^[A-Za-z0-9+/_-]{43}={0,1}$")  # 32 bytes: 43 symbols, 1 pad


@dataclass(frozen=True)
class ApiframeAdapter:
    """Apiframe's v2 image API for the Flux models it serves."""

    base_url: str
    api_key: str = field(repr=False)
    output_hosts: tuple[str, ...]
    name: str = "apiframe"
    supports_webhooks: bool = True
    # Idempotency-Key = the job id: a repeated submit answers with the task it created.
    submit_idempotent: bool = True

    def auth_headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key, "Accept": "application/json"}

    def submit_call(self, order: SubmitOrder) -> ProviderCall:
        """The generate request; the job id is the Idempotency-Key, so a retry cannot pay twice."""
        if order.input.get("image_url") is not None:
            # Dropping it silently would return an unedited picture and still be charged.
            raise ProviderRejected("apiframe: no documented parameter takes an image to edit "
                                   "(image_url); use image_prompt for a reference image")
        params = {
            key: _FORMATS.get(value, value) if key == "output_format" else value
            for key, value in order.input.items()
            if key not in _TOP_LEVEL and value is not None
        }
        body: dict[str, Any] = {"prompt": order.input.get("prompt"), "model": order.model,
                                "fluxParams": params}
        if order.webhook_url:
            # camelCase, unlike BFL's webhook_url; v2 has no webhook secret (§c.1).
            body["webhookUrl"] = order.webhook_url
            body["webhookEvents"] = list(WEBHOOK_EVENTS)
        headers = {**self.auth_headers(), "Content-Type": "application/json",
                   "Idempotency-Key": order.job_id}
        return ProviderCall("POST", f"{self.base_url}/v2/images/generate", headers, body)

    def parse_submit(self, response: RawResponse, *, now_ms: int) -> Accepted:
        raise_for_error(response, now_ms=now_ms, what="generate")
        body = response.json_object()
        job_id = required_text(body, "jobId", "id") if body else None
        if job_id is None:
            # Unlike BFL, resending is safe here: the same Idempotency-Key answers with the job
            # already created (if any) instead of starting and charging a second one.
            raise ProviderRetryable(f"generate: HTTP {response.status} answer without a jobId",
                                    status=response.status)
        return Accepted(job_id, self._job_url(job_id))

    def status_call(self, provider_job_id: str, polling_url: str | None) -> ProviderCall:
        # Always rebuilt from the base URL: the stored polling_url is our own construction, and
        # the key is never sent anywhere else.
        return ProviderCall("GET", self._job_url(provider_job_id), self.auth_headers())

    def parse_status(self, response: RawResponse, *, now_ms: int) -> StatusReport:
        if response.status == 404:
            return StatusReport(ProviderState.NOT_FOUND, message="HTTP 404: job not found")
        raise_for_error(response, now_ms=now_ms, what="jobs")
        body = response.json_object()
        if body is None:
            raise ProviderRetryable(f"jobs: HTTP {response.status} answer is not a JSON object",
                                    status=response.status)
        return report_from_job(body)

    def verify_callback(
        self, headers: Mapping[str, str], body: bytes, secret: str | None
    ) -> Verdict:
        """Check X-Webhook-Signature: HMAC-SHA256(SHA-256(api key), raw body) (§c.3).

        `secret` is unused: v2 signs with the account's API key, not a per-job secret. The docs
        say neither how the MAC is encoded (hex or base64) nor whether the HMAC key is the hex
        text of the digest or its 32 raw bytes, so all four combinations are accepted.
        """
        signature = header(headers, "x-webhook-signature")
        if signature is None:
            return Verdict.UNSIGNED
        presented = _decode_mac(signature)
        if not presented:
            raise CallbackRejected(
                "X-Webhook-Signature is malformed: expected hex or base64 of 32 bytes",
                code="malformed_signature",
            )
        digest = hashlib.sha256(self.api_key.encode()).digest()
        expected = [hmac_sha256(key, body) for key in (digest.hex().encode(), digest)]
        # Every comparison runs, so timing says nothing about which variant came close.
        matches = [hmac.compare_digest(mac, want) for mac in presented for want in expected]
        if not any(matches):
            raise CallbackRejected("X-Webhook-Signature does not match", code="bad_signature")
        return Verdict.VERIFIED

    def parse_callback(self, body: bytes) -> StatusReport:
        value = callback_object(body)
        event = value.get("event")
        state = _EVENT_STATES.get(event.strip().lower()) if isinstance(event, str) else None
        if state is ProviderState.RUNNING:
            # A progress event is never terminal, whatever its status field says.
            return StatusReport(state, required_text(value, "jobId", "id"), (),
                                _fraction(value.get("progress")))
        return report_from_job(value, state)

    def cancel_call(self, provider_job_id: str, polling_url: str | None = None) -> ProviderCall | None:
        return None  # no cancel endpoint found in Apiframe's v2 docs (§c.5)

    def parse_cancel(self, response: RawResponse, *, now_ms: int) -> bool:
        return False

    def _job_url(self, job_id: str) -> str:
        return f"{self.base_url}/v2/jobs/{quote(job_id, safe='')}"


def report_from_job(body: Mapping[str, Any], state: ProviderState | None = None) -> StatusReport:
    """A report from GET /v2/jobs/{id} or a webhook body; `state` (from the event) wins."""
    provider_id = required_text(body, "jobId", "id")
    if state is None:
        raw = body.get("status")
        status = raw.strip().lower() if isinstance(raw, str) else ""
        state = _STATES.get(status, ProviderState.PENDING)  # unknown: keep polling
    if state is ProviderState.READY:
        # `result` is a URL string (docs-v2) or {"images": [...]} (apiframe.ai/docs), §c.2.
        urls = output_urls(body.get("result"))
        if not urls:
            return StatusReport(ProviderState.FAILED, provider_id,
                                message="COMPLETED without a result URL")
        return StatusReport(state, provider_id, urls, 1.0)
    if state is ProviderState.FAILED:
        error = body.get("error")
        if isinstance(error, dict):
            error = error.get("message") or json.dumps(error)
        message = error if isinstance(error, str) and error else "FAILED without a reason"
        return StatusReport(state, provider_id, message=message[:500])
    progress = _fraction(body.get("progress")) if state is ProviderState.RUNNING else None
    return StatusReport(state, provider_id, (), progress)


def _fraction(progress: Any) -> float | None:
    """Apiframe's 0-100 progress as a 0-1 fraction."""
    if not isinstance(progress, int | float) or isinstance(progress, bool):
        return None
    return min(max(float(progress) / 100, 0.0), 1.0)


def _decode_mac(signature: str) -> list[bytes]:
    """Every 32-byte reading of the header: hex, or base64 (standard or URL-safe alphabet)."""
    text = signature.strip()
    if text.lower().startswith("sha256="):
        text = text[len("sha256="):]  # tolerated: other signers prefix it, Apiframe might too
    if _HEX_MAC.match(text):
        return [bytes.fromhex(text)]
    if not _BASE64_MAC.match(text):
        return []
    standard = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        return []
    return [raw] if len(raw) == 32 else []
