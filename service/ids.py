"""Identifiers: sortable by creation time, unguessable after it."""

from __future__ import annotations

import secrets

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_job_id(now_ms: int) -> str:
    """`job_` + a ULID: 48 bits of milliseconds, then 80 random bits, in Crockford base32."""
    value = (now_ms << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "job_" + "".join(reversed(chars)).lower()


def new_webhook_secret() -> str:
    """A fresh per-job secret for the provider to sign its callback with."""
    return secrets.token_urlsafe(32)


def new_upload_id(now_ms: int) -> str:
    return new_prefixed_id("upl", now_ms)


def new_prefixed_id(prefix: str, now_ms: int) -> str:
    """`<prefix>_` + a time-sortable ULID, e.g. evt_, dlv_, sub_."""
    return f"{prefix}_{new_job_id(now_ms)[4:]}"
