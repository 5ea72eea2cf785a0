"""Outbound signing, per the Standard Webhooks spec (v1, symmetric). Pure: no I/O.

    webhook-id:        the event's id, the same on every retry to every destination
    webhook-timestamp: integer Unix seconds of this attempt
    webhook-signature: "v1,<base64 HMAC-SHA256(key, f'{id}.{timestamp}.{body}')>", space-separated
                       when several secrets are live (during a rotation)

The key is the base64-decoded part of a `whsec_<base64>` secret
(standard-webhooks/standard-webhooks: spec/standard-webhooks.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from service.errors import ConfigError

PREFIX = "whsec_"
SECRET_BYTES = 32  # the spec asks for 24 to 64 random bytes


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_` secret; ConfigError if it is not one."""
    key = decode_secret(secret)
    if not 24 <= len(key) <= 64:
        raise ConfigError("a webhook secret must hold 24 to 64 random bytes")
    return key


def decode_secret(secret: str) -> bytes:
    """The bytes of any `whsec_<base64>` secret, whatever its length (a provider's secret is
    checked by its signatures, not by fluxhook's rule for its own); ConfigError if malformed."""
    if not secret.startswith(PREFIX):
        raise ConfigError("a webhook secret must look like whsec_<base64>")
    try:
        key = base64.b64decode(secret[len(PREFIX):], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError("a webhook secret must look like whsec_<base64>") from exc
    if not key:
        raise ConfigError("a webhook secret must not be empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature over exactly the bytes sent."""
    return signature(secret_key(secret), msg_id, timestamp, body)


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`: what a sender puts in
    `webhook-signature` and what a receiver recomputes to compare (Replicate's callbacks)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(live_secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one signature per live secret, newest first."""
    return " ".join(sign(s, msg_id, timestamp, body) for s in live_secrets)


def webhook_headers(
    live_secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(live_secrets, msg_id, timestamp, body),
        "content-type": "application/json",
    }
