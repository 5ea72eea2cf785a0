"""Every failure fluxhook names, classified once.

    FluxhookError
    ├── ApiError                  a request fluxhook refuses; becomes the one JSON error body
    │   ├── MalformedRequest      400  body is not JSON, or not the expected shape
    │   ├── Unauthorized          401  missing or wrong API key
    │   ├── NotFound              404  unknown job, output or route
    │   ├── Conflict              409  idempotency key reused with another body; job already final
    │   ├── Gone                  410  a job's outputs were removed (DELETE or retention)
    │   ├── PayloadTooLarge       413  body over the configured cap
    │   ├── ValidationFailed      422  input breaks a rule; `details` names each field
    │   ├── CallbackRejected      400/401/403/413  an inbound provider callback refused
    │   └── StoreUnavailable      503  the database did not answer (nothing was recorded)
    ├── ProviderError             a call to a provider failed, classified at the adapter boundary
    │   ├── ProviderRetryable     429, 5xx, timeout, connection error: try again later
    │   │   └── ProviderOutcomeUnknown  the request went out but its answer was lost
    │   └── ProviderRejected      any other 4xx, or an unusable answer: do not retry
    ├── OutputError               an output image could not be stored
    │   ├── OutputRetryable       transient: 5xx, timeout, connection error, not yet there
    │   └── OutputRejected        never will be: host not allowed, not an image, too large
    ├── InputUnavailable          an input image fluxhook must send as base64 could not be fetched;
    │                             `retryable` when trying later may help (inline_images.py)
    ├── DestinationRefused        a notification URL resolves to a non-public address (egress.py)
    ├── JsonRefused               JSON text or a value breaking the strict rules (strict_json.py);
    │                             `as_api_error()`: 400 when it is not JSON, else 422 naming its path
    ├── ConfigError               a setting is missing or malformed (fails fast at start)
    └── ClientError               the command-line client and a running fluxhook (client.py)
        ├── ServerUnreachable     nothing answered: refused, unknown host, TLS, timed out
        ├── ServerRefused         an error status (or an unreadable answer), with the server's
        │                         own error body: `code`, `message`, `details`
        └── OutputMismatch        a downloaded image's sha256 is not the one its job states

Nothing above the adapters and the store catches httpx or sqlite3 exceptions: they are
translated into this tree where they happen (as httpx's `map_httpcore_exceptions` does).
"""

from __future__ import annotations

from typing import Any


class FluxhookError(Exception):
    """Base of every error fluxhook raises on purpose."""


class ApiError(FluxhookError):
    """A refused request. `code` is stable and machine-readable; `details` names fields."""

    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: list[dict[str, Any]] | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.details = details or []


class MalformedRequest(ApiError):
    status_code = 400
    code = "malformed_request"


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class Gone(ApiError):
    status_code = 410
    code = "gone"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "payload_too_large"


class ValidationFailed(ApiError):
    status_code = 422
    code = "validation_failed"


class CallbackRejected(ApiError):
    """An inbound callback that changes nothing: forged, malformed, wrong job or too large."""

    status_code = 401
    code = "callback_rejected"


class StoreUnavailable(ApiError):
    """The database failed; the caller may retry (a provider will, for a callback)."""

    status_code = 503
    code = "store_unavailable"


class ProviderError(FluxhookError):
    """A provider call failed. `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ProviderRetryable(ProviderError):
    """Worth retrying: `retry_after` (seconds) is the provider's own hint, if it gave one."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class ProviderOutcomeUnknown(ProviderRetryable):
    """The request may have reached the provider but its answer was lost (a read timeout, a
    connection dropped mid-answer, a 2xx that cannot be read). For a submit this means a
    provider task, and a charge, may exist: it must not be blindly repeated."""


class ProviderRejected(ProviderError):
    """Permanent: retrying the same request cannot succeed."""


class OutputError(FluxhookError):
    """An output image could not be fetched and stored."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index


class InputUnavailable(FluxhookError):
    """An input image a provider takes only as base64 could not be fetched (inline_images.py).

    `retryable`: a timeout, a connection error, a 5xx or 429 (the submit is tried again later);
    otherwise the image will not come (a 404, not an image, too large, a refused destination).
    The message names the field and the host, never the URL: its path or query may be a
    credential (an upload token, a presigned signature).
    """

    def __init__(self, field: str, reason: str, *, retryable: bool) -> None:
        self.field = field
        self.reason = reason
        self.retryable = retryable
        self.message = f"input.{field}: {reason}"
        super().__init__(self.message)


class OutputRetryable(OutputError):
    """Transient: try again while the provider's URL is still alive."""


class OutputRejected(OutputError):
    """Will never succeed for this URL."""


# Rules whose breach means the text is not JSON at all (a 400); the others are JSON values
# fluxhook refuses (a 422).
JSON_SYNTAX_RULES = frozenset({"json", "utf-8", "depth", "non_finite_literal"})
MAX_PATH_CHARS = 300


class JsonRefused(FluxhookError, ValueError):
    """JSON text or a value the strict boundary refuses; `path` names the value ("" for all)."""

    def __init__(self, reason: str, *, rule: str, path: str = "",
                 line: int | None = None, column: int | None = None) -> None:
        # A path echoes the client's keys: keep it short, and writable in an error body (a lone
        # surrogate in a key becomes the text `\udXXX`).
        path = path.encode("utf-8", "backslashreplace").decode("utf-8")
        if len(path) > MAX_PATH_CHARS:
            path = path[:MAX_PATH_CHARS] + "..."
        super().__init__(f"{path or '(document)'}: {reason}")
        self.reason = reason
        self.rule = rule
        self.path = path
        self.line = line
        self.column = column

    def as_api_error(self, field_prefix: str = "", *, body_name: str = "(body)") -> ApiError:
        """The one error body for this refusal: 400 when the text is not JSON, else 422."""
        if field_prefix and self.path:
            field = self.path if self.path.startswith("[") else f".{self.path}"
            field = f"{field_prefix}{field}"
        else:
            field = field_prefix or self.path or body_name
        detail: dict[str, Any] = {"field": field, "rule": self.rule, "message": self.reason}
        if self.line is not None:
            detail.update(line=self.line, column=self.column)
        if self.rule in JSON_SYNTAX_RULES:
            return MalformedRequest(f"{field} is not valid JSON: {self.reason}",
                                    code="malformed_json", details=[detail])
        return ValidationFailed(f"{field}: {self.reason}", details=[detail])


class ConfigError(FluxhookError):
    """A setting is missing or malformed."""


class ClientError(FluxhookError):
    """The command-line client could not do what it was asked; `message` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServerUnreachable(ClientError):
    """No answer from the server at `url` (never holding credentials)."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class ServerRefused(ClientError):
    """The server answered `status` with its one error body (or something unreadable)."""

    def __init__(
        self, message: str, *, status: int, code: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details or []


class OutputMismatch(ClientError):
    """A downloaded output's bytes hash to `actual`, not the job's `expected` sha256."""

    def __init__(self, message: str, *, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual
