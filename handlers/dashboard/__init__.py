"""The dashboard at /dashboard: server-rendered pages (templates/) with a little JavaScript of
its own (static/), no asset from anywhere else.

Every route checks the session cookie (service/dashboard_sessions.py) itself: pages send a
browser without one to the login form, data (fragments, images, the event stream) answer 401,
and the pages' POSTs also need the session's CSRF token. Jinja2 and Pillow are imported on the
first request that needs them, so `import service.app` stays lean (tests/test_cold_start.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

import anyio
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from handlers.body import read_body
from handlers.errors import error_response
from service.dashboard_sessions import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    SESSION_MAX_AGE_S,
    DashboardSessions,
    Session,
)
from service.errors import MalformedRequest
from service.settings import Settings
from service.sign_in_limits import SignInLimits

if TYPE_CHECKING:
    from starlette.templating import Jinja2Templates

HERE = Path(__file__).resolve().parent
PREFIX = "/dashboard"

Page = Callable[[Request, Session], Awaitable[Response]]
Action = Callable[[Request, Session, FormData], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


class Dashboard:
    """What the dashboard's routes share: the sessions, the templates, the thumbnail makers."""

    def __init__(self, settings: Settings) -> None:
        self.sessions = DashboardSessions(settings.secret_key, settings.api_key)
        self.sign_in_limits = SignInLimits()  # wrong keys posted to the login form, per client
        self.secure_cookie = settings.public_url.startswith("https://")
        self._templates: Jinja2Templates | None = None
        self._makers: anyio.CapacityLimiter | None = None

    @property
    def templates(self) -> Jinja2Templates:
        if self._templates is None:  # jinja2 on first use, not at start-up
            from starlette.templating import Jinja2Templates

            from handlers.dashboard.format import FILTERS

            templates = Jinja2Templates(directory=HERE / "templates")
            templates.env.filters.update(FILTERS)
            self._templates = templates
        return self._templates

    @property
    def makers(self) -> anyio.CapacityLimiter:
        """At most two thumbnails being made at once in this process (made in the event loop)."""
        if self._makers is None:
            self._makers = anyio.CapacityLimiter(2)
        return self._makers

    def render(
        self, request: Request, session: Session, name: str, context: dict[str, Any], *, status: int = 200,
    ) -> Response:
        base = base_path(request)
        full = {"base": base, "csrf": self.sessions.csrf_token(session), "csrf_field": CSRF_FIELD,
                "signed_in_by_key": not self.sessions.open, "path": request.url.path, **context}
        response = self.templates.TemplateResponse(request, name, full, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = CSP
        return response

    def set_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(SESSION_COOKIE, value, max_age=int(SESSION_MAX_AGE_S), path=PREFIX,
                            httponly=True, samesite="strict", secure=self.secure_cookie)

    def session_of(self, request: Request) -> Session | None:
        return self.sessions.read(request.cookies.get(SESSION_COOKIE))

    # Guards -----------------------------------------------------------------------------------

    def page(self, endpoint: Page) -> Endpoint:
        """An HTML page: without a signed-in session, the login form (or, when the dashboard is
        open, a new session)."""

        async def guarded(request: Request) -> Response:
            session, fresh = self.session_of(request), None
            if session is None and self.sessions.open:
                session, fresh = self.sessions.start(signed_in=True)
            if session is None or not session.signed_in:
                return RedirectResponse(f"{base_path(request)}/login?next={quote(request.url.path)}",
                                        status_code=303)
            response = await endpoint(request, session)
            if fresh is not None:
                self.set_cookie(response, fresh)
            return response

        return guarded

    def data(self, endpoint: Page) -> Endpoint:
        """A fragment, an image or the event stream: 401 without a signed-in session."""

        async def guarded(request: Request) -> Response:
            session = self.session_of(request)
            if session is None and self.sessions.open:
                session, _ = self.sessions.start(signed_in=True)
            if session is None or not session.signed_in:
                return _unauthorized()
            return await endpoint(request, session)

        return guarded

    def action(self, endpoint: Action) -> Endpoint:
        """A POST from a dashboard page: a signed-in session and its CSRF token, from the form's
        hidden field or the X-CSRF-Token header."""

        async def guarded(request: Request) -> Response:
            session = self.session_of(request)
            if session is None or not session.signed_in:
                return _unauthorized()
            form = await read_form(request)
            token = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
            if not self.sessions.csrf_ok(session, token if isinstance(token, str) else None):
                return error_response(403, "csrf_failed", "missing or wrong CSRF token: reload the page",
                                      details=[{"field": CSRF_FIELD, "rule": "csrf"}])
            return await endpoint(request, session, form)

        return guarded


# Scripts, styles and images only from the dashboard itself; no inline script.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


FORM_LIMIT = 16 * 1024  # the dashboard's forms carry a few short fields


async def read_form(request: Request) -> FormData:
    """A URL-encoded form body (what the pages' forms send), its size capped while reading, as
    every body is (handlers/body.py); Starlette's `form()` would hold any size in memory."""
    body = await read_body(request, limit=FORM_LIMIT)
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if body and kind != "application/x-www-form-urlencoded":
        raise MalformedRequest("expected a form (application/x-www-form-urlencoded)",
                               details=[{"field": "Content-Type", "rule": "form"}])
    try:
        pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True, max_num_fields=20,
                          encoding="utf-8", errors="replace")
    except ValueError as exc:
        raise MalformedRequest("too many form fields",
                               details=[{"field": "(body)", "rule": "maxFields"}]) from exc
    return FormData([(name, value) for name, value in pairs])



def _unauthorized() -> Response:
    return error_response(401, "unauthorized", "sign in to the dashboard first",
                          details=[{"field": SESSION_COOKIE, "rule": "session"}])


def base_path(request: Request) -> str:
    """The dashboard's own path (the app's root path + /dashboard), inside its mount."""
    return str(request.scope.get("root_path", "")) or PREFIX


def back_to(request: Request, target: object) -> str:
    """A `next` the dashboard may redirect to: one of its own paths, never another site's."""
    base = base_path(request)
    if not isinstance(target, str) or not (target.isascii() and target.isprintable()):
        return base + "/"
    if target.startswith(base + "/") and not any(bad in target for bad in ("//", "\\")):
        return target
    return base + "/"


def dashboard_mount(settings: Settings) -> Mount:
    """The dashboard's routes under /dashboard (handlers/dashboard/pages.py and actions.py)."""
    from handlers.dashboard.actions import Actions, recover, redeliver_one, set_status
    from handlers.dashboard.pages import Pages

    dash = Dashboard(settings)
    pages, actions = Pages(dash), Actions(dash)
    return Mount(PREFIX, routes=[
        Route("/", dash.page(pages.jobs), methods=["GET"]),
        Route("/jobs/{job_id}", dash.page(pages.job), methods=["GET"]),
        Route("/jobs/{job_id}/row", dash.data(pages.job_row), methods=["GET"]),
        Route("/jobs/{job_id}/live", dash.data(pages.job_live), methods=["GET"]),
        Route("/jobs/{job_id}/outputs/{index}", dash.data(pages.output), methods=["GET"]),
        Route("/jobs/{job_id}/outputs/{index}/thumb", dash.data(pages.thumbnail), methods=["GET"]),
        Route("/subscriptions", dash.page(pages.subscriptions), methods=["GET"]),
        Route("/health", dash.data(pages.health), methods=["GET"]),
        Route("/events", dash.data(pages.events), methods=["GET"]),
        Route("/login", pages.login_form, methods=["GET"]),
        Route("/login", actions.login, methods=["POST"]),
        Route("/logout", dash.action(actions.logout), methods=["POST"]),
        Route("/deliveries/{delivery_id}/redeliver", dash.action(redeliver_one), methods=["POST"]),
        Route("/subscriptions/{subscription_id}/status", dash.action(set_status), methods=["POST"]),
        Route("/subscriptions/{subscription_id}/recover", dash.action(recover), methods=["POST"]),
        Route("/subscriptions/{subscription_id}/rotate-secret", dash.action(actions.rotate_secret),
              methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ])
