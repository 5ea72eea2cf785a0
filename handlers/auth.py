"""API-key check for /metrics and every /v1/ route except provider callbacks (they carry their own token) and
the tick (its own credential)."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from handlers.errors import error_response


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, *, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key is None or scope["type"] != "http" or not self._guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 self.api_key.encode()):
            response = error_response(
                401, "unauthorized", "missing or wrong API key: send Authorization: Bearer <key>",
                details=[{"field": "Authorization", "rule": "bearer"}],
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _guarded(path: str) -> bool:
        # Callbacks carry their own token, and the tick its own credential (handlers/tick.py).
        # /metrics names providers, models and volumes: a scraper sends the key as a bearer token.
        if path == "/metrics":
            return True
        return path.startswith("/v1/") and not path.startswith("/v1/callbacks/") and path != "/v1/tick"
