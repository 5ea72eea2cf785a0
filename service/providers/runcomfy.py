"""RunComfy Model API: POST /v1/models/{model path}, then poll the request's result endpoint.

Source: docs.runcomfy.com/model-apis (async queue endpoints, error codes) and the
flux-1-kontext/pro/edit model page, summarised in shared/providers.md §d. The Model API
documents no webhooks, so fluxhook polls; how a failed request looks is undocumented, so every
plausible failure shape is read as a failure and anything unknown as "still pending".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from service.errors import CallbackRejected, ProviderRejected
from service.providers.base import (
    Accepted,
    ProviderCall,
    ProviderState,
    RawResponse,
    StatusReport,
    SubmitOrder,
    error_message,
    is_api_url,
    raise_for_error,
    required_text,
)
from service.providers.bfl import output_urls
from service.signing import Verdict

_STATES = {
    "in_queue": ProviderState.PENDING,
    "queued": ProviderState.PENDING,
    "in_progress": ProviderState.RUNNING,
    "running": ProviderState.RUNNING,
    "completed": ProviderState.READY,
    "succeeded": ProviderState.READY,  # the Serverless API's word (§d.3)
    "cancelled": ProviderState.CANCELLED,
    "canceled": ProviderState.CANCELLED,
    # `failed` is not listed for the Model API (§d.2); these are the likely spellings.
    "failed": ProviderState.FAILED,
    "error": ProviderState.FAILED,
    "errored": ProviderState.FAILED,
}
# "400002 InsufficientResources: no remaining balance" arrives as an HTTP 400, not a 402 (§d.5).
INSUFFICIENT_RESOURCES = 400002


@dataclass(frozen=True)
class RunComfyAdapter:
    """RunComfy's Model API queue: submit, poll the result, cancel while queued."""

    base_url: str
    api_key: str = field(repr=False)
    output_hosts: tuple[str, ...]
    name: str = "runcomfy"
    supports_webhooks: bool = False
    submit_idempotent: bool = False
    # result_url receives the key, so it is only followed to RunComfy's hosts or the base host.
    api_hosts: tuple[str, ...] = ("*.runcomfy.net",)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"}

    def submit_call(self, order: SubmitOrder) -> ProviderCall:
        # The native id is a path (blackforestlabs/flux-1-kontext/pro/edit): its slashes stay.
        path = quote(order.model.strip("/"), safe="/")
        # Body keys map 1:1 to the model's input schema (§d.1). Unset fields are left out, as
        # a null would not match the schema's types (aspect_ratio is an enum, seed an integer).
        body = {key: value for key, value in order.input.items() if value is not None}
        headers = {**self.auth_headers(), "Content-Type": "application/json"}
        return ProviderCall("POST", f"{self.base_url}/v1/models/{path}", headers, body)

    def parse_submit(self, response: RawResponse, *, now_ms: int) -> Accepted:
        _raise_for_error(response, now_ms=now_ms, what="submit")
        body = response.json_object()
        request_id = required_text(body, "request_id", "id") if body else None
        if body is None or request_id is None:
            # It may have been accepted (and charged); without an id it cannot be followed, and
            # with no idempotency key a retry could pay twice. Fail loudly instead.
            raise ProviderRejected("submit: 2xx answer without a request_id", status=response.status)
        result_url = body.get("result_url")
        return Accepted(request_id, result_url if isinstance(result_url, str) else None)

    def status_call(self, provider_job_id: str, polling_url: str | None) -> ProviderCall:
        # The result endpoint answers the output when done and the status otherwise (model
        # page), so one call per poll is enough.
        url = polling_url if polling_url and is_api_url(polling_url, self.base_url, self.api_hosts) else None
        if url is None:
            url = f"{self._request_url(provider_job_id)}/result"
        return ProviderCall("GET", url, self.auth_headers())

    def parse_status(self, response: RawResponse, *, now_ms: int) -> StatusReport:
        if response.status == 404:
            # 404001 ResourceNotFound: "nonexistent, deleted, or expired request_id" (§d.5).
            return StatusReport(ProviderState.NOT_FOUND,
                                message=f"HTTP 404: {error_message(response)}")
        _raise_for_error(response, now_ms=now_ms, what="result")
        body = response.json_object()
        if body is None:
            raise ProviderRejected(f"result: HTTP {response.status} answer is not a JSON object",
                                   status=response.status)
        return report_from_result(body)

    def verify_callback(
        self, headers: Mapping[str, str], body: bytes, secret: str | None
    ) -> Verdict:
        raise _no_callbacks()

    def parse_callback(self, body: bytes) -> StatusReport:
        raise _no_callbacks()

    def cancel_call(self, provider_job_id: str, polling_url: str | None = None) -> ProviderCall | None:
        return ProviderCall("POST", f"{self._request_url(provider_job_id)}/cancel",
                            self.auth_headers())

    def parse_cancel(self, response: RawResponse, *, now_ms: int) -> bool:
        """True once cancelled; False when RunComfy refuses because the request already runs.

        "Running jobs cannot be cancelled" (model page). The refusal's status is undocumented,
        so both 409 and 400 mean "too late"; anything else goes through the usual classes.
        """
        if response.status in (400, 409) and _error_code(response) != INSUFFICIENT_RESOURCES:
            return False
        _raise_for_error(response, now_ms=now_ms, what="cancel")  # raises on any other non-2xx
        return True  # normally {"status": "cancelled"}; any 2xx means RunComfy took it

    def _request_url(self, request_id: str) -> str:
        return f"{self.base_url}/v1/requests/{quote(request_id, safe='')}"


def report_from_result(body: Mapping[str, Any]) -> StatusReport:
    """A report from GET .../result: the output once completed, else the current status."""
    request_id = required_text(body, "request_id", "id")
    raw = body.get("status")
    status = raw.strip().lower() if isinstance(raw, str) else ""
    state = _STATES.get(status, ProviderState.PENDING)  # unknown: keep polling, never crash
    if state is ProviderState.CANCELLED:
        return StatusReport(state, request_id, message="cancelled at RunComfy")
    error = body.get("error")
    if error or state is ProviderState.FAILED:
        return StatusReport(ProviderState.FAILED, request_id,
                            message=_failure_message(error, status or "failed"))
    if state is ProviderState.READY:
        urls = _output_urls(body.get("output", body.get("result")))
        if not urls:
            return StatusReport(ProviderState.FAILED, request_id,
                                message="completed without an output image URL")
        return StatusReport(state, request_id, urls, 1.0)
    return StatusReport(state, request_id)


def _output_urls(output: Any) -> tuple[str, ...]:
    """`output.image`, `output.images`, or a bare URI or list: the model's schema decides (§d.2)."""
    if isinstance(output, list):
        output = {"images": output}
    return output_urls(output)


def _failure_message(error: Any, status: str) -> str:
    if isinstance(error, dict):
        kind, text = error.get("type"), error.get("message")
        parts = [p for p in (kind, text) if isinstance(p, str) and p]
        detail = ": ".join(parts) if parts else json.dumps(error)
    elif isinstance(error, str) and error:
        detail = error
    else:
        detail = "no reason given"
    return f"{status}: {detail}"[:500]


def _error_code(response: RawResponse) -> int | None:
    body = response.json_object()
    code = body.get("error_code") if body else None
    if isinstance(code, str) and code.isdigit():
        return int(code)
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _raise_for_error(response: RawResponse, *, now_ms: int, what: str) -> None:
    """The usual classes, except that an empty balance is named as such (§d.5)."""
    if 200 <= response.status < 300:
        return
    text = error_message(response)
    if _error_code(response) == INSUFFICIENT_RESOURCES or "insufficientresources" in text.lower():
        raise ProviderRejected(
            f"{what}: HTTP {response.status}: insufficient credits "
            f"({INSUFFICIENT_RESOURCES} InsufficientResources): {text}",
            status=response.status,
        )
    raise_for_error(response, now_ms=now_ms, what=what)


def _no_callbacks() -> CallbackRejected:
    return CallbackRejected("RunComfy's Model API sends no callbacks",
                            code="no_callbacks", status_code=404)
