"""Outbound webhooks: the two signing schemes and one delivery with BFL's retry schedule."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import httpx

from service.simulator.config import SimulatorConfig
from service.simulator.state import Task

# BFL's skill docs: a receiver must answer within 30 s or the attempt counts as failed.
CALLBACK_TIMEOUT_S = 30.0


def bfl_signature(secret: str, body: bytes) -> str:
    """X-BFL-Signature value: "sha256=" + hex HMAC-SHA256(secret as UTF-8, raw body)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def apiframe_signature(api_key: str, body: bytes, *, key_form: str, encoding: str) -> str:
    """X-Webhook-Signature value: HMAC-SHA256 of the raw body keyed by SHA-256 of the API key.

    Apiframe's docs say "the signing secret is the SHA-256 hash of your API key" without
    saying whether that is the hex text or the raw digest, nor how the MAC is encoded, so both
    are knobs: key_form "hex" | "raw", encoding "hex" | "base64".
    """
    digest = hashlib.sha256(api_key.encode()).digest()
    key = digest.hex().encode() if key_form == "hex" else digest
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return mac.hex() if encoding == "hex" else base64.b64encode(mac).decode()


def standard_webhook_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """A `webhook-signature` entry as Replicate sends it (Standard Webhooks v1):
    "v1," + base64 HMAC-SHA256 of "{id}.{timestamp}.{body}" keyed by base64decode(secret after
    "whsec_"). Written here from the spec rather than imported from fluxhook's own signer, so
    the end-to-end tests check fluxhook's verifier against an independent implementation."""
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@dataclass(frozen=True)
class Callback:
    """One callback, serialised once so every retry and duplicate sends identical bytes."""

    event: str
    body: bytes
    headers: Mapping[str, str]


class CallbackFormat(Protocol):
    """How one provider words its callbacks."""

    def progress_points(self, task: Task) -> Sequence[float]:
        """Fractions of the running time at which to send progress events (often none)."""
        ...

    def build(self, task: Task, event: str, *, now: float, config: SimulatorConfig) -> Callback | None:
        """The callback for event "progress" or "terminal", or None if it is not sent."""
        ...


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    callback: Callback,
    task: Task,
    *,
    retry_delays_s: Sequence[float],
    clock: Callable[[], float],
) -> bool:
    """POST one callback, retrying after each failure; True once a receiver answered 2xx.

    Only 2xx acknowledges: redirects are not followed and count as failures, as do
    connection errors and timeouts. The attempt is counted on the task before it is made.
    """
    for attempt, delay in enumerate((0.0, *retry_delays_s), start=1):
        if delay:
            await anyio.sleep(delay)
        task.callback_attempts += 1
        entry: dict[str, Any] = {"event": callback.event, "attempt": attempt, "at": clock()}
        task.callback_log.append(entry)
        try:
            response = await client.post(
                url, content=callback.body, headers=dict(callback.headers), timeout=CALLBACK_TIMEOUT_S
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            entry["error"] = type(exc).__name__
            continue
        entry["status_code"] = response.status_code
        entry["answered_at"] = clock()  # when the receiver's answer came back (tests order by it)
        if response.is_success:
            task.callbacks_acknowledged += 1
            return True
    return False
