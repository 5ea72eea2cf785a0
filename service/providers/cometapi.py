"""CometAPI's Flux proxy: BFL's protocol under /flux/v1, with Bearer auth and its own errors.

Source: apidoc.cometapi.com flux-generate-image, flux-query and errors/error-codes-handling,
summarised in shared/providers.md §b. Everything the docs leave open (the full status enum, the
callback's body and signature) is taken to be BFL's, read by `BflAdapter`'s tolerant parser,
and polling `get_result` stays the authority.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.errors import ProviderRejected
from service.providers.base import (
    Accepted,
    ProviderState,
    RawResponse,
    StatusReport,
    callback_object,
    error_message,
)
from service.providers.bfl import BflAdapter, report_from_body


@dataclass(frozen=True)
class CometApiAdapter(BflAdapter):
    """BFL's adapter pointed at api.cometapi.com; only auth and error classification differ."""

    api_key: str = field(repr=False)  # keep the key out of logs and tracebacks
    name: str = "cometapi"
    submit_path: str = "/flux/v1/{model}"
    result_path: str = "/flux/v1/get_result"
    # polling_url receives the key, so it is only followed to CometAPI's own hosts (or to the
    # base URL's host, which is how the embedded simulator is reached).
    api_hosts: tuple[str, ...] = ("*.cometapi.com",)
    supports_webhooks: bool = True
    submit_idempotent: bool = False

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def parse_submit(self, response: RawResponse, *, now_ms: int) -> Accepted:
        _reject_invalid_request(response, what="submit")
        return super().parse_submit(response, now_ms=now_ms)

    def parse_status(self, response: RawResponse, *, now_ms: int) -> StatusReport:
        _reject_invalid_request(response, what="get_result")
        return super().parse_status(response, now_ms=now_ms)

    def parse_callback(self, body: bytes) -> StatusReport:
        """BFL's callback parser, except that "ready" without a usable URL is not a failure.

        CometAPI documents no callback body (providers.md §b.3): a success in a shape we do not
        recognise must not fail a paid job, so it becomes a running hint and the next poll of
        `get_result` (documented, §b.2) decides.
        """
        report = super().parse_callback(body)  # rejects non-JSON and non-object bodies
        if report.state is not ProviderState.FAILED:
            return report
        value = callback_object(body)
        # Would the same body with a URL have been READY? Then only the URL was missing.
        probe = report_from_body({**value, "result": {"sample": "https://probe.invalid/x"}})
        if probe.state is ProviderState.READY:
            return StatusReport(
                ProviderState.RUNNING,
                report.provider_job_id,
                message="callback says ready but has no image URL we understand; polling decides",
            )
        return report


def _reject_invalid_request(response: RawResponse, *, what: str) -> None:
    """A 500 with `error.code == "invalid_request"` is permanent (providers.md §b.5).

    CometAPI's error page: "500 with code invalid_request: fix the request, do not retry".
    Every other 5xx (and 429) stays retryable through `raise_for_error`.
    """
    if response.status != 500:
        return
    body = response.json_object()
    envelope = body.get("error") if body else None
    if isinstance(envelope, dict) and envelope.get("code") == "invalid_request":
        raise ProviderRejected(
            f"{what}: HTTP 500 invalid_request: {error_message(response)}", status=500
        )
