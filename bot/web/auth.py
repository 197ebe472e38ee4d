"""Who may use the console: an argon2 password for the operator's browser (a signed session
cookie, HttpOnly and SameSite=strict, with a CSRF token every POST must echo), a bearer token
for API clients, and a limit on failed logins per client.

Pure of I/O but for the clock it is handed: the routes in ``bot/web/app.py`` call these.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "stackbot_session"
LOGIN_COOKIE = "stackbot_login"  # the login form's CSRF token (double submit)
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash for ``web.password_hash``."""
    return _hasher.hash(password)


def check_hash(encoded: str) -> None:
    """Refuse a configured hash that is not argon2, naming the problem (at start, not at the
    first login)."""
    if not encoded.startswith("$argon2"):
        raise ValueError("web.password_hash is not an argon2 hash (it must start with "
                         "'$argon2'); make one with `stackbot web hash-password`")


def verify_password(encoded: str, password: str) -> bool:
    try:
        return _hasher.verify(encoded, password)
    except (VerificationError, InvalidHashError):
        return False


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    csrf: str


class Sessions:
    """Signed, expiring session cookies. The cookie carries the user and the session's CSRF
    token; nothing is kept server-side, so the signing key decides who is logged in."""

    def __init__(self, secret: str, max_age_s: float) -> None:
        self._ser = URLSafeTimedSerializer(secret, salt="stackbot-session")
        self._login = URLSafeTimedSerializer(secret, salt="stackbot-login")
        self.max_age_s = max_age_s

    def issue(self, user: str) -> tuple[str, Session]:
        session = Session(user, secrets.token_urlsafe(24))
        return self._ser.dumps({"u": session.user, "c": session.csrf}), session

    def read(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            data = self._ser.loads(cookie, max_age=int(self.max_age_s))
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("u"), str) \
                or not isinstance(data.get("c"), str):
            return None
        return Session(data["u"], data["c"])

    def login_token(self) -> str:
        """A fresh token for the login form, set as a cookie and echoed by the form."""
        return self._login.dumps(secrets.token_urlsafe(16))

    def login_token_ok(self, cookie: str | None, form: str | None) -> bool:
        if not cookie or not form or not same(cookie, form):
            return False
        try:
            self._login.loads(cookie, max_age=3600)
        except BadSignature:
            return False
        return True


class LoginLimiter:
    """At most ``attempts`` failed logins per client within ``window_s``; a success does not
    reset the count (an attacker who knows one password learns nothing from the limit)."""

    def __init__(self, attempts: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts, self.window_s, self.clock = attempts, window_s, clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        now = self.clock()
        q = self._failures.setdefault(client, deque())
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def retry_after(self, client: str) -> float:
        """Seconds until this client may try again; 0 when it may now."""
        q = self._recent(client)
        if len(q) < self.attempts:
            return 0.0
        return max(1.0, self.window_s - (self.clock() - q[0]))

    def failed(self, client: str) -> None:
        self._recent(client).append(self.clock())
        if len(self._failures) > 10_000:  # a flood of distinct clients: keep the newest
            for key in list(self._failures)[:5_000]:
                del self._failures[key]
