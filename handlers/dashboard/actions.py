"""The dashboard's POSTs: signing in and out, and the subscription and delivery actions, which
are the API's own (service/subscriptions.py). Each answers with a redirect back to the page it
came from (`next`), so the forms work without any script."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from handlers.dashboard import Dashboard, back_to, base_path, read_form
from service.context import WorkContext
from service.dashboard_sessions import SESSION_COOKIE, Session
from service.errors import ValidationFailed
from service.subscriptions import (
    change_subscription,
    recover_deliveries,
    redeliver,
    rotate_subscription_secret,
)

RECOVER_WINDOWS_S = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}


def _ctx(request: Request) -> WorkContext:
    ctx: WorkContext = request.state.ctx
    return ctx


def _back(request: Request, form: FormData) -> RedirectResponse:
    return RedirectResponse(back_to(request, form.get("next")), status_code=303)


class Actions:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    async def login(self, request: Request) -> Response:
        """The API key, posted in the form's body: a signed-in session (a new one, so an id
        handed out before signing in is worth nothing after), or the form again with 401."""
        form = await read_form(request)
        given, target = form.get("key"), back_to(request, form.get("next"))
        client, now = request.client.host if request.client else "", _ctx(request).clock()
        wait_s = self.dash.sign_in_limits.retry_after_s(client, now=now)
        if wait_s is not None:  # too many wrong keys from here: not even checked
            return self._form_again(request, target, f"Too many wrong keys: try again in {wait_s} s.",
                                    status=429, headers={"Retry-After": str(wait_s)})
        if not isinstance(given, str) or not self.dash.sessions.key_matches(given):
            self.dash.sign_in_limits.failed(client, now=now)
            return self._form_again(request, target, "That is not the API key.", status=401)
        _, cookie = self.dash.sessions.start(signed_in=True)
        response = RedirectResponse(target, status_code=303)
        self.dash.set_cookie(response, cookie)
        return response

    def _form_again(self, request: Request, target: str, error: str, *, status: int,
                    headers: dict[str, str] | None = None) -> Response:
        session, cookie = self.dash.sessions.start(signed_in=False)
        response = self.dash.render(request, session, "login.html", {"next": target, "error": error},
                                    status=status)
        response.headers.update(headers or {})
        self.dash.set_cookie(response, cookie)
        return response

    async def logout(self, request: Request, session: Session, form: FormData) -> Response:
        response = RedirectResponse(f"{base_path(request)}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/dashboard", httponly=True, samesite="strict",
                               secure=self.dash.secure_cookie)
        return response

    async def rotate_secret(self, request: Request, session: Session, form: FormData) -> Response:
        """The new secret is shown once, on the page this answers with (never stored in a URL)."""
        sub = await rotate_subscription_secret(_ctx(request), request.path_params["subscription_id"])
        return self.dash.render(request, session, "secret.html", {"sub": sub})


async def redeliver_one(request: Request, session: Session, form: FormData) -> Response:
    await redeliver(_ctx(request), request.path_params["delivery_id"])
    return _back(request, form)


async def set_status(request: Request, session: Session, form: FormData) -> Response:
    status = form.get("status")
    if status not in ("enabled", "disabled"):
        raise ValidationFailed("status must be enabled or disabled", details=[
            {"field": "status", "rule": "enum", "allowed": ["enabled", "disabled"]}])
    await change_subscription(_ctx(request), request.path_params["subscription_id"], {"status": status})
    return _back(request, form)


async def recover(request: Request, session: Session, form: FormData) -> Response:
    """Send again what failed in the chosen window (the last hour, day or week)."""
    window = RECOVER_WINDOWS_S.get(str(form.get("window", "24h")))
    if window is None:
        raise ValidationFailed("window must be 1h, 24h or 7d", details=[
            {"field": "window", "rule": "enum", "allowed": list(RECOVER_WINDOWS_S)}])
    ctx = _ctx(request)
    await recover_deliveries(ctx, request.path_params["subscription_id"], since=ctx.clock() - ctx.ms(window))
    return _back(request, form)
