"""Black Forest Labs' protocol (api.bfl.ai), which CometAPI also follows.

Sources: shared/bfl-openapi.json and shared/providers.md §a. The callback format is only
described by BFL's agent skill and community code, so every documented variant is accepted
(`id`/`task_id`, `Ready`/`SUCCESS`, ...) and polling stays the authority.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from service.errors import ProviderRejected
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
from service.signing import Verdict, verify_bfl_callback
from service.urls import host_matches

# The unified vocabulary is BFL's own, except for images: Kontext's and FLUX.2's `input_image`
# and `input_image_<n>` references, fill's and expand's base64 `image` and `mask`. Those two
# models get the bytes themselves: the submitter has put them in `image_url`/`mask_url` already
# (Model.inline_images), so this stays a pure renaming.
_RENAMES = {"image_url": "input_image", **{f"image_url_{n}": f"input_image_{n}" for n in range(2, 9)}}
_EDIT_RENAMES = {"image_url": "image", "mask_url": "mask"}
EDIT_MODELS = frozenset({"flux-pro-1.0-fill", "flux-pro-1.0-expand"})

_STATES = {
    "pending": ProviderState.PENDING,
    "queued": ProviderState.PENDING,
    "processing": ProviderState.RUNNING,
    "running": ProviderState.RUNNING,
    "ready": ProviderState.READY,
    "success": ProviderState.READY,
    "succeeded": ProviderState.READY,
    "error": ProviderState.FAILED,
    "failed": ProviderState.FAILED,
    "request moderated": ProviderState.MODERATED,
    "content moderated": ProviderState.MODERATED,
    "task not found": ProviderState.NOT_FOUND,
}


@dataclass(frozen=True)
class BflAdapter:
    base_url: str
    api_key: str = field(repr=False)  # keep the key out of logs and tracebacks
    output_hosts: tuple[str, ...]
    name: str = "bfl"
    submit_path: str = "/v1/{model}"
    result_path: str = "/v1/get_result"
    api_hosts: tuple[str, ...] = ("*.bfl.ai",)
    supports_webhooks: bool = True
    submit_idempotent: bool = False

    def auth_headers(self) -> dict[str, str]:
        return {"x-key": self.api_key}

    def submit_call(self, order: SubmitOrder) -> ProviderCall:
        renames = _EDIT_RENAMES if order.model in EDIT_MODELS else _RENAMES
        body: dict[str, Any] = {renames.get(k, k): v for k, v in order.input.items()}
        if order.webhook_url:
            body["webhook_url"] = order.webhook_url
            if order.webhook_secret:
                body["webhook_secret"] = order.webhook_secret
        url = self.base_url + self.submit_path.format(model=quote(order.model, safe=""))
        headers = {**self.auth_headers(), "Content-Type": "application/json",
                   "Accept": "application/json"}
        return ProviderCall("POST", url, headers, body)

    def parse_submit(self, response: RawResponse, *, now_ms: int) -> Accepted:
        raise_for_error(response, now_ms=now_ms, what="submit")
        body = response.json_object()
        provider_id = required_text(body, "id", "task_id") if body else None
        if body is None or provider_id is None:
            # The provider may have accepted (and charged for) the job, but without an id we
            # cannot follow it; retrying could pay twice. Fail loudly instead.
            raise ProviderRejected("submit: 2xx answer without a task id", status=response.status)
        polling_url = body.get("polling_url")
        return Accepted(provider_id, polling_url if isinstance(polling_url, str) else None)

    def status_call(self, provider_job_id: str, polling_url: str | None) -> ProviderCall:
        # BFL: "you must use the polling_url returned" (it names the region that has the
        # job). Only follow it to BFL's own hosts or ours, since it receives the API key.
        url = polling_url if polling_url and self._is_api_host(polling_url) else None
        if url is None:
            url = f"{self.base_url}{self.result_path}?id={quote(provider_job_id, safe='')}"
        return ProviderCall("GET", url, {**self.auth_headers(), "Accept": "application/json"})

    def parse_status(self, response: RawResponse, *, now_ms: int) -> StatusReport:
        if response.status == 404:
            return StatusReport(ProviderState.NOT_FOUND, message="HTTP 404")
        raise_for_error(response, now_ms=now_ms, what="get_result")
        body = response.json_object()
        if body is None:
            raise ProviderRejected("get_result: answer is not a JSON object", status=response.status)
        return report_from_body(body)

    def verify_callback(
        self, headers: Mapping[str, str], body: bytes, secret: str | None
    ) -> Verdict:
        return verify_bfl_callback(headers, body, secret)

    def parse_callback(self, body: bytes) -> StatusReport:
        value = callback_object(body)
        return report_from_body(value)

    def cancel_call(self, provider_job_id: str, polling_url: str | None = None) -> ProviderCall | None:
        return None  # BFL's OpenAPI has no cancel endpoint (shared/providers.md §a.5)

    def parse_cancel(self, response: RawResponse, *, now_ms: int) -> bool:
        return False

    def _is_api_host(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        base = urlsplit(self.base_url)
        if parts.scheme != base.scheme and parts.scheme != "https":
            return False
        if host == (base.hostname or "").lower():
            return True
        return any(host_matches(host, pattern) for pattern in self.api_hosts)


def report_from_body(body: Mapping[str, Any]) -> StatusReport:
    """A status report from a get_result answer or a callback body (both BFL shapes)."""
    raw_status = body.get("status")
    status_text = raw_status.strip().lower() if isinstance(raw_status, str) else ""
    state = _STATES.get(status_text, ProviderState.PENDING)
    provider_id = required_text(body, "id", "task_id")
    progress = body.get("progress")
    progress_value = float(progress) if isinstance(progress, int | float) else None
    if progress_value is not None and progress_value > 1:
        progress_value /= 100  # some answers give percent
    if state is ProviderState.READY:
        urls = output_urls(body.get("result"))
        if not urls:
            return StatusReport(ProviderState.FAILED, provider_id,
                                message="provider said ready but gave no image URL")
        return StatusReport(state, provider_id, urls, 1.0)
    message = None
    if state in (ProviderState.FAILED, ProviderState.MODERATED, ProviderState.NOT_FOUND):
        message = _failure_message(body, str(raw_status))
    return StatusReport(state, provider_id, (), progress_value, message)


def output_urls(result: Any) -> tuple[str, ...]:
    """Image URLs from a BFL `result`: `sample` (string or list), `samples`, or `images`."""
    if isinstance(result, str):
        return (result,)
    if not isinstance(result, dict):
        return ()
    for key in ("sample", "samples", "images", "image", "url"):
        value = result.get(key)
        if isinstance(value, str) and value:
            return (value,)
        if isinstance(value, list):
            urls = tuple(
                v if isinstance(v, str) else v.get("url")
                for v in value
                if isinstance(v, str) or (isinstance(v, dict) and isinstance(v.get("url"), str))
            )
            if urls:
                return urls  # type: ignore[return-value]
    return ()


def _failure_message(body: Mapping[str, Any], status: str) -> str:
    parts = [status]
    for key in ("error", "message", "details"):
        value = body.get(key)
        if isinstance(value, str) and value:
            parts.append(value)
        elif isinstance(value, dict) and value:
            parts.append(json.dumps(value)[:200])
    return ": ".join(dict.fromkeys(parts))[:500]

