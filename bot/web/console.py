"""What every console route shares: the settings, the ledger connection, sessions, the
login limiter, and the dependency that says who is asking."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import Settings
from bot.errors import ConfigError, LedgerError
from bot.web.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    LoginLimiter,
    Session,
    Sessions,
    check_hash,
    same,
)
from bot.web.events import Changes

HERE = Path(__file__).parent
@dataclass(frozen=True, slots=True)
class Operator:
    """Who is asking, and how: a browser session (which must echo its CSRF token on every
    POST) or a bearer token (an API client, which sends no cookies)."""

    name: str
    session: Session | None


class Console:
    """What the routes share: settings, the ledger, sessions, the login limiter."""

    def __init__(self, settings: Settings, account: str) -> None:
        web = settings.web
        if web.password_hash is None and web.api_token is None:
            raise ConfigError("the console needs web.password_hash (STACKBOT_WEB_PASSWORD_HASH; "
                              "make one with `stackbot web hash-password`) or web.api_token")
        if web.password_hash is not None:
            try:
                check_hash(web.password_hash.get_secret_value())
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        self.settings, self.account = settings, account
        secret = (web.session_secret.get_secret_value() if web.session_secret
                  else secrets.token_urlsafe(32))
        self.sessions = Sessions(secret, web.session_hours * 3600)
        self.limiter = LoginLimiter(web.login_attempts, web.login_window_s)
        self.reports_dir = (web.reports_dir or settings.home / "reports").expanduser()
        self.engine: AsyncEngine | None = None
        self.changes: Changes | None = None

    @property
    def db(self) -> AsyncEngine:
        if self.engine is None:
            raise LedgerError("the console has no ledger connection yet")
        return self.engine

    def operator(self, request: Request) -> Operator | None:
        """The logged-in operator, or None."""
        auth = request.headers.get("authorization", "")
        token = self.settings.web.api_token
        if auth.lower().startswith("bearer ") and token is not None:
            if same(auth[7:].strip(), token.get_secret_value()):
                return Operator(self.settings.web.username, None)
            return None
        session = self.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None or session.user != self.settings.web.username:
            return None
        return Operator(session.user, session)

    @staticmethod
    def csrf_ok(who: Operator, submitted: str | None) -> bool:
        """A bearer client has no cookie to ride on, so no CSRF to fear; a session must echo
        the token it was given."""
        if who.session is None:
            return True
        return bool(submitted) and same(str(submitted), who.session.csrf)


def require(request: Request) -> Operator:
    """FastAPI dependency: an authenticated operator, else 401."""
    console: Console = request.app.state.console
    who = console.operator(request)
    if who is None:
        raise HTTPException(401, "login required", headers={"WWW-Authenticate": "Bearer"})
    return who


async def require_csrf(request: Request, who: Operator) -> None:
    """A POST from a browser session must carry its CSRF token (header or form field)."""
    submitted = request.headers.get(CSRF_HEADER)
    if submitted is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        submitted = (await request.form()).get(CSRF_FIELD)  # type: ignore[assignment]
    if not Console.csrf_ok(who, submitted):
        raise HTTPException(403, "missing or wrong CSRF token")
