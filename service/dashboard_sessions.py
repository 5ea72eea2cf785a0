"""Dashboard sessions: a signed cookie, and CSRF tokens tied to it. Pure: no I/O.

With FLUXHOOK_API_KEY set, a session is signed in only by posting the key to the login form;
the key itself never travels in a URL or a cookie. Without it the dashboard is open, as the API
is, but every browser still gets a session so the page's own POSTs carry a CSRF token.

One salted serializer per purpose (service/tokens.py's habit), keyed by the secret key AND the
API key: changing the API key ends every session.
"""

from __future__ import annotations

import hmac
import math
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer, URLSafeTimedSerializer

SESSION_COOKIE = "fluxhook_dashboard"
SESSION_MAX_AGE_S = 12 * 3600
SESSION_PREFIX = "ds1."
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Session:
    id: str
    signed_in: bool  # proved the API key (every session does when none is set)

    def __repr__(self) -> str:  # the id is what CSRF tokens are tied to: not for logs
        return f"Session(signed_in={self.signed_in})"


class DashboardSessions:
    def __init__(self, secret_key: str, api_key: str | None) -> None:
        self._api_key = api_key
        signing = f"{secret_key}\x00{api_key or ''}"
        self._cookies = URLSafeTimedSerializer(signing, salt="fluxhook.dashboard.session.v1")
        self._csrf = URLSafeSerializer(signing, salt="fluxhook.dashboard.csrf.v1")

    def __repr__(self) -> str:
        return "DashboardSessions(***)"

    @property
    def open(self) -> bool:
        """No API key is set: anyone who reaches the dashboard may use it, as with the API."""
        return self._api_key is None

    def key_matches(self, given: str) -> bool:
        return self._api_key is not None and hmac.compare_digest(given.encode(), self._api_key.encode())

    def start(self, *, signed_in: bool) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(secrets.token_urlsafe(18), signed_in or self.open)
        return session, SESSION_PREFIX + self._cookies.dumps([session.id, session.signed_in])

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie holds; None unless ours, intact and younger than its max age."""
        if not cookie or not cookie.startswith(SESSION_PREFIX):
            return None
        try:
            value = self._cookies.loads(cookie[len(SESSION_PREFIX):], max_age=math.ceil(SESSION_MAX_AGE_S))
        except BadSignature:  # SignatureExpired included
            return None
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
                and isinstance(value[1], bool)):
            return None
        return Session(value[0], value[1] or self.open)

    def csrf_token(self, session: Session) -> str:
        return str(self._csrf.dumps(session.id))

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        if not token:
            return False
        try:
            value = self._csrf.loads(token)
        except BadSignature:
            return False
        return isinstance(value, str) and hmac.compare_digest(value.encode(), session.id.encode())
