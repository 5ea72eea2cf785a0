"""Callback tokens: the unguessable path segment that binds a callback to one provider and job.

One salted itsdangerous serializer per purpose (datasette's `tokens.py` habit). Tokens carry a
prefix so the callback endpoint can tell "not ours at all" from "ours but tampered with".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

from service.errors import ApiError, CallbackRejected, NotFound

CALLBACK_PREFIX = "cb1."
UPLOAD_PREFIX = "up1."


@dataclass(frozen=True)
class CallbackTarget:
    provider: str
    job_id: str


class CallbackTokens:
    """Issues and reads the token in each job's `webhook_url`."""

    def __init__(self, secret_key: str) -> None:
        self._serializer = URLSafeSerializer(secret_key, salt="fluxhook.callback.v1")
        # `loads` makes a new signer per call; every callback request reads a token, so the
        # one signer (same key, salt and checks) is made once and used directly.
        self._signer = self._serializer.make_signer()

    def issue(self, provider: str, job_id: str) -> str:
        return CALLBACK_PREFIX + str(self._serializer.dumps([provider, job_id]))

    def read(self, token: str, *, provider: str) -> CallbackTarget:
        """The job a token names; CallbackRejected (403) unless it is ours and for `provider`."""
        if not token.startswith(CALLBACK_PREFIX):
            raise CallbackRejected(
                "callback token is not a fluxhook token", code="invalid_token", status_code=403
            )
        try:
            value = self._serializer.load_payload(self._signer.unsign(token[len(CALLBACK_PREFIX) :]))
        except BadSignature as exc:
            raise CallbackRejected(
                "callback token signature is invalid", code="invalid_token", status_code=403
            ) from exc
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise CallbackRejected("callback token is malformed", code="invalid_token", status_code=403)
        token_provider, job_id = value
        if token_provider != provider:
            raise CallbackRejected(
                "callback token belongs to another provider", code="wrong_provider", status_code=403
            )
        return CallbackTarget(provider=token_provider, job_id=job_id)


class UploadTokens:
    """Signed, expiring references to uploaded images that providers fetch without credentials."""

    def __init__(self, secret_key: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret_key, salt="fluxhook.upload.v1")

    def issue(self, upload_id: str) -> str:
        return UPLOAD_PREFIX + str(self._serializer.dumps(upload_id))

    def read(self, token: str, *, max_age_s: float) -> str:
        """The upload a token names; 404 unless ours and intact, 410 once expired."""
        if not token.startswith(UPLOAD_PREFIX):
            raise NotFound("no such upload", details=[{"field": "token", "rule": "exists"}])
        try:
            value = self._serializer.loads(token[len(UPLOAD_PREFIX):], max_age=math.ceil(max_age_s))
        except SignatureExpired as exc:
            raise ApiError("this upload URL has expired", code="expired", status_code=410,
                           details=[{"field": "token", "rule": "max_age"}]) from exc
        except BadSignature as exc:
            raise NotFound("no such upload", details=[{"field": "token", "rule": "signature"}]) from exc
        if not isinstance(value, str):
            raise NotFound("no such upload", details=[{"field": "token", "rule": "format"}])
        return value
