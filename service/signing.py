"""Signature checks over raw bytes, in constant time. Pure: no I/O, no JSON parsing.

Inbound (providers calling fluxhook back). BFL's scheme is only described by BFL's own agent
skill (shared/providers.md §a.3): `X-BFL-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
Community handlers instead compare an `x-webhook-secret` header in plain text. Both are
accepted; anything present but wrong is a forgery, and an absent signature is only a hint.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from enum import StrEnum

from service.errors import CallbackRejected

_HEX_SHA256 = re.compile(r"^(?:sha256=)?([0-9a-fA-F]{64})$")
# How far a signed timestamp may be from now: Standard Webhooks' five minutes, which fal's
# documentation also asks for.
TIMESTAMP_TOLERANCE_S = 300


class Verdict(StrEnum):
    VERIFIED = "verified"  # a signature (or shared secret) proved the sender
    UNSIGNED = "unsigned"  # nothing to check: treat the callback as a hint and confirm by polling


def hmac_sha256(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def hmac_sha256_hex(key: bytes, body: bytes) -> str:
    return hmac_sha256(key, body).hex()


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by its lowercase name. Starlette's Headers ignore case; a plain dict (tests,
    other servers) may not, so any spelling is found."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def fresh_timestamp(value: str, *, now_s: int, header_name: str) -> int:
    """The Unix seconds in a signed callback's timestamp header, when within
    ±`TIMESTAMP_TOLERANCE_S` of `now_s`; else CallbackRejected, `malformed_signature` for what is
    not a time and `stale_timestamp` for a callback sent too long ago (replayed) or ahead."""
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 12):
        raise CallbackRejected(f"{header_name} is not Unix seconds", code="malformed_signature")
    sent_at = int(value)
    if abs(now_s - sent_at) > TIMESTAMP_TOLERANCE_S:
        raise CallbackRejected(f"{header_name} is more than 5 minutes off: a stale or replayed callback",
                               code="stale_timestamp")
    return sent_at


def verify_bfl_callback(headers: Mapping[str, str], body: bytes, secret: str | None) -> Verdict:
    """Check a BFL-protocol callback (BFL and CometAPI) against the job's webhook_secret.

    Raises CallbackRejected (401) when a signature or secret header is present but wrong or
    malformed; returns UNSIGNED when there is none (or the job has no secret to check with).
    """
    signature = header(headers, "x-bfl-signature")
    shared = header(headers, "x-webhook-secret")
    if signature is None and shared is None:
        return Verdict.UNSIGNED
    if secret is None:
        raise CallbackRejected("callback is signed but the job has no webhook secret")
    if signature is not None:
        match = _HEX_SHA256.match(signature.strip())
        if match is None:
            raise CallbackRejected(
                "X-BFL-Signature is malformed: expected 'sha256=<64 hex digits>'",
                code="malformed_signature",
            )
        expected = hmac_sha256_hex(secret.encode(), body)
        if not hmac.compare_digest(expected, match.group(1).lower()):
            raise CallbackRejected("X-BFL-Signature does not match", code="bad_signature")
        return Verdict.VERIFIED
    assert shared is not None
    if not hmac.compare_digest(shared.strip().encode(), secret.encode()):
        raise CallbackRejected("x-webhook-secret does not match", code="bad_signature")
    return Verdict.VERIFIED
