"""Callback tokens: the unguessable path segment that binds a callback to one provider and job.

One salted itsdangerous serializer per purpose (datasette's `tokens.py` habit). Tokens carry a
prefix so the callback endpoint can tell "not ours at all" from "ours but tampered with".
"""

from __future__ import annotations

from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

from service.errors import CallbackRejected

CALLBACK_PREFIX = "cb1."


@dataclass(frozen=True)
class CallbackTarget:
    provider: str
    job_id: str


class CallbackTokens:
    """Issues and reads the token in each job's `webhook_url`."""

    def __init__(self, secret_key: str) -> None:
        self._serializer = URLSafeSerializer(secret_key, salt="fluxhook.callback.v1")

    def issue(self, provider: str, job_id: str) -> str:
        return CALLBACK_PREFIX + str(self._serializer.dumps([provider, job_id]))

    def read(self, token: str, *, provider: str) -> CallbackTarget:
        """The job a token names; CallbackRejected (403) unless it is ours and for `provider`."""
        if not token.startswith(CALLBACK_PREFIX):
            raise CallbackRejected(
                "callback token is not a fluxhook token", code="invalid_token", status_code=403
            )
        try:
            value = self._serializer.loads(token[len(CALLBACK_PREFIX) :])
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
