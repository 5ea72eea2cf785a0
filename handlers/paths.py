"""Paths no route can name: one holding a NUL character (`%00`) names no job, subscription,
delivery or upload, and PostgreSQL's text cannot even hold it (the read would fail, a 503).
Such a request is answered 404 before any route or store sees it, on every backend alike."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from handlers.errors import error_response


class NulPathMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "\x00" in scope["path"]:
            response = error_response(404, "not_found", "no such id",
                                      details=[{"field": "(path)", "rule": "exists"}])
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
