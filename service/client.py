"""The command-line client's HTTP side: a running fluxhook's API, its event stream, its images.

Synchronous httpx, since a command does one thing at a time; the transport is injectable
(tests pass `httpx.MockTransport`). Every failure is classified here, once, into
service/errors.py's ClientError tree: nothing above this module sees an httpx exception.
The API key travels only in the `Authorization` header, to the one configured server.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from service.errors import ClientError, OutputMismatch, ServerRefused, ServerUnreachable

TERMINAL_EVENTS = frozenset({"job.succeeded", "job.failed", "job.cancelled"})
# fluxhook's stream sends a comment every 15 s (handlers/events.py KEEPALIVE_S): a minute of
# silence is a connection that died without closing.
STREAM_SILENCE_S = 60.0
CHUNK_BYTES = 64 * 1024


def display_url(url: str) -> str:
    """`url` without any user or password in it, fit for a message."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@dataclass(frozen=True)
class SseMessage:
    id: str | None
    event: str
    data: str


@dataclass
class SseDecoder:
    """Server-Sent Events lines in, messages out (the WHATWG event-stream rules). Pure."""

    retry_ms: int | None = None
    _id: str | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> SseMessage | None:
        """The message a blank line completes, else None."""
        if line == "":
            message = None
            if self._data:
                message = SseMessage(self._id, self._event or "message", "\n".join(self._data))
            self._id, self._event, self._data = None, "", []
            return message
        if line.startswith(":"):
            return None  # a comment: fluxhook's keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None


@dataclass(frozen=True)
class Event:
    """One event of `GET /v1/events`: its position in the log (`seq`), type and body."""

    seq: int | None
    type: str
    body: dict[str, Any]

    @property
    def job(self) -> dict[str, Any] | None:
        """The job document a `job.*` event carries."""
        data = self.body.get("data")
        return data if self.type.startswith("job.") and isinstance(data, dict) else None

    @classmethod
    def parse(cls, message: SseMessage) -> Event:
        try:
            body = json.loads(message.data)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ServerRefused(f"the event stream sent an event that is not a JSON object: "
                                f"{message.data[:80]!r}", status=200, code="unreadable_event")
        seq = int(message.id) if message.id and message.id.isascii() and message.id.isdigit() else None
        return cls(seq, message.event if message.event != "message" else str(body.get("type", "")), body)


@dataclass(frozen=True)
class Saved:
    """An output written to disk, its bytes checked against the job's sha256."""

    index: int
    path: Path
    bytes: int
    sha256: str


class Client:
    """A running fluxhook's API. `sleep` and `clock` are injectable for the reconnect logic."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = "fluxhook-cli",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                                  transport=transport)
        self._sleep = sleep
        self._clock = clock

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- plain requests -------------------------------------------------------------------

    def submit(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """`POST /v1/jobs`: the job document (a replayed one for a reused idempotency key)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/v1/jobs", json=body, headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{_segment(job_id)}")

    def jobs(self, *, status: str | None = None, limit: int | None = None,
             cursor: str | None = None) -> dict[str, Any]:
        """One page of `GET /v1/jobs`: `{"data": [...], "next_cursor"}`."""
        params = {k: str(v) for k, v in (("status", status), ("limit", limit), ("cursor", cursor))
                  if v is not None}
        return self._json("GET", "/v1/jobs", params=params)

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        data = self._json("GET", f"/v1/jobs/{_segment(job_id)}/deliveries").get("data")
        return data if isinstance(data, list) else []

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ServerRefused(
                f"{method} {path} answered {response.status_code} with something that is not a "
                f"JSON object ({response.headers.get('content-type', 'no content type')})",
                status=response.status_code, code="unreadable_answer")
        return body

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise refused(response)
        return response

    # --- the event stream -----------------------------------------------------------------

    def events(
        self,
        *,
        job_id: str | None = None,
        types: tuple[str, ...] = (),
        after: int | None = None,
        until: float | None = None,
        idle_s: float | None = None,
        reconnect_s: float = 30.0,
        on_reconnect: Callable[[int | None], None] | None = None,
    ) -> Iterator[Event]:
        """`GET /v1/events`, followed across dropped connections: each reconnection sends
        `Last-Event-ID` of the last event seen, so nothing is missed or repeated.

        `after`: start after this event (0: from the start of the log; None: only new events).
        `until`: stop (return) at this `clock()` time. `idle_s`: stop once no event came for
        this long (to read what is there and no more). A server that cannot be reached again
        within `reconnect_s` raises ServerUnreachable; the first connection is not retried.
        """
        last, connected, failing_since, retry_s = after, False, None, 1.0
        params: dict[str, str] = {}
        if job_id:
            params["job_id"] = job_id
        if types:
            params["type"] = ",".join(types)
        while True:
            read_s = STREAM_SILENCE_S if idle_s is None else idle_s
            if until is not None:
                left = until - self._clock()
                if left <= 0:
                    return
                read_s = min(read_s, left)
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            timeout = httpx.Timeout(self.timeout, read=read_s)
            try:
                with self._http.stream("GET", "/v1/events", params=params, headers=headers,
                                       timeout=timeout) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise refused(response)
                    connected, failing_since = True, None
                    decoder = SseDecoder()
                    for line in response.iter_lines():
                        message = decoder.feed(line)
                        retry_s = (decoder.retry_ms or 1000) / 1000
                        if message is None:
                            continue
                        event = Event.parse(message)
                        if event.seq is not None:
                            last = event.seq
                        yield event
            except httpx.ReadTimeout:
                # Quiet for idle_s (everything there was has been read), or out of time.
                if idle_s is not None or (until is not None and self._clock() >= until):
                    return
                # Else a minute without even a keep-alive: the connection is dead; resume.
            except httpx.TransportError as exc:
                if not connected:
                    raise self._unreachable(exc) from None
                failing_since = failing_since if failing_since is not None else self._clock()
                if self._clock() - failing_since > reconnect_s:
                    raise self._unreachable(exc) from None
            if on_reconnect is not None:
                on_reconnect(last)
            self._sleep(retry_s)

    # --- outputs --------------------------------------------------------------------------

    def download(
        self, job_id: str, output: dict[str, Any], target: Path,
        *, on_bytes: Callable[[int], None] | None = None,
    ) -> Saved:
        """Stream output `output["index"]` into `target`, hashing as it goes; the file appears
        only once its sha256 is the job's (OutputMismatch otherwise, and nothing is left)."""
        index, expected = int(output["index"]), str(output["sha256"])
        partial = target.with_name(f".{target.name}.part")
        digest, size = hashlib.sha256(), 0
        path = f"/v1/jobs/{_segment(job_id)}/outputs/{index}"
        try:
            # A redirect is a presigned object-store URL (FLUXHOOK_BLOB_REDIRECT=presigned);
            # httpx drops the Authorization header when it leaves this server's origin.
            with self._http.stream("GET", path, follow_redirects=True,
                                   headers={"Accept": "*/*"}) as response:
                if response.status_code >= 400:
                    response.read()
                    raise refused(response)
                with open(partial, "wb") as handle:
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        handle.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        if on_bytes is not None:
                            on_bytes(len(chunk))
            actual = digest.hexdigest()
            if actual != expected:
                raise OutputMismatch(
                    f"output {index} of {job_id}: downloaded {size} bytes with sha256 {actual}, "
                    f"but the job states {expected}; nothing was written to {target}",
                    expected=expected, actual=actual)
            partial.replace(target)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        except OSError as exc:
            raise ClientError(f"cannot write {target}: {exc.strerror or exc}") from None
        finally:
            partial.unlink(missing_ok=True)
        return Saved(index, target, size, expected)

    def _unreachable(self, exc: httpx.TransportError) -> ServerUnreachable:
        url = display_url(self.base_url)
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            reason = f"no answer in time ({type(exc).__name__})"
        return ServerUnreachable(f"cannot reach fluxhook at {url}: {reason}", url=url)


def refused(response: httpx.Response) -> ServerRefused:
    """The server's own error body as a ServerRefused; a body that is not fluxhook's error
    shape (a proxy's HTML 502) is named by its status and content type, never parsed."""
    status = response.status_code
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        details = error.get("details")
        return ServerRefused(error["message"], status=status, code=str(error.get("code") or "error"),
                             details=details if isinstance(details, list) else [])
    kind = response.headers.get("content-type", "no content type").split(";")[0]
    reason = response.reason_phrase or "error"
    return ServerRefused(f"{response.request.method} {response.request.url.path} answered {status} "
                         f"{reason} ({kind})", status=status, code="http_error")


def _segment(value: str) -> str:
    """`value` as one path segment: a job id with a `/` or `?` must not reach another route."""
    return quote(value, safe="")
