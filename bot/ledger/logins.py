"""Least-privilege database logins: the owner migrates, the service logs in as itself.

The owner of the schema (``database.migrate_url``) runs the migrations and keeps the service's
login role up to date. The service connects *as* that login, never as the owner, so no
``RESET ROLE`` or ``SET ROLE`` can hand it the owner's rights: on ``audit_events`` it may read
and insert, nothing else (``migrations/versions/0005_app_role.py`` holds the grants, which
the login inherits from ``stackbot_app``).

Which URL is which:

- ``migrate_url`` given: it is the owner; ``url`` is the service's login as written
  (compose: the bot never receives the owner's password).
- no ``migrate_url``, and ``url`` names the login (its user is ``app_role``): the service
  cannot migrate; it checks the schema is current and says how to upgrade it when not.
- no ``migrate_url``, and ``url`` names another user (the embedded default, a developer's
  server): that user is the owner; the service connects with the same host and database as
  the login ``app_role``, with no password (embedded and local servers trust it; elsewhere
  give ``url`` as the login and ``migrate_url`` as the owner).

The login's password is never sent in clear: ``db upgrade`` hands PostgreSQL a SCRAM-SHA-256
verifier computed here, as ``psql``'s ``\\password`` does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.errors import ConfigError, LedgerError
from bot.ledger.migrate import HEAD, current_revision, upgrade
from bot.logs import get_logger, password_of

log = get_logger("ledger.logins")

GRANTS_ROLE = "stackbot_app"  # NOLOGIN; holds the grants (migration 0005)


@dataclass(frozen=True)
class Logins:
    """Who migrates (``owner``; None: nobody here may) and who the service is."""

    owner: str | None
    service: str
    role: str
    password: str | None  # set on the login by ``db upgrade``; None: leave it as it is

    @property
    def least_privilege(self) -> bool:
        return self.owner is None or user_of(self.owner) != self.role


def user_of(url: str) -> str:
    return unquote(urlsplit(url).username or "")


def as_user(url: str, user: str) -> str:
    """The same server and database as ``user``, with no password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def database_logins(url: str, migrate_url: str | None, app_role: str | None) -> Logins:
    """Pure: which URL migrates and which the service uses (the module docstring)."""
    if migrate_url:
        if app_role and user_of(url) != app_role:
            raise ConfigError(
                f"database.url logs in as {user_of(url)!r} but database.app_role is "
                f"{app_role!r}: with a migrate_url, database.url is the service login")
        return Logins(migrate_url, url, user_of(url), password_of(url))
    if not app_role:  # opted out: the service is whoever the URL names, owner included
        return Logins(url, url, user_of(url), None)
    if user_of(url) == app_role:
        return Logins(None, url, app_role, None)
    return Logins(url, as_user(url, app_role), app_role, None)


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """A SCRAM-SHA-256 verifier (RFC 5802/7677) in PostgreSQL's stored format, so that the
    password itself never appears in a statement (or in a server log that quotes one)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_login(owner: AsyncEngine, role: str, password: str | None) -> None:
    """Create or update the service's login: LOGIN, a member of ``stackbot_app`` for the
    grants, and nothing more. Refuses a login that could undo the point of having one."""
    async with owner.begin() as conn:
        row = (await conn.execute(text(
            "SELECT rolsuper, rolcreaterole, rolbypassrls, rolcanlogin FROM pg_roles "
            "WHERE rolname = :r"), {"r": role})).first()
        if row is not None and (row.rolsuper or row.rolcreaterole or row.rolbypassrls):
            raise LedgerError(f"the service login {role!r} has SUPERUSER, CREATEROLE or "
                              "BYPASSRLS: it could undo the audit trail's protection; give "
                              "the service a plain login")
        try:
            if row is None:
                await conn.exec_driver_sql(f"CREATE ROLE {_ident(role)} LOGIN")
            elif not row.rolcanlogin:
                await conn.exec_driver_sql(f"ALTER ROLE {_ident(role)} LOGIN")
            if password is not None:
                verifier = scram_verifier(password).replace("'", "''")
                await conn.exec_driver_sql(f"ALTER ROLE {_ident(role)} PASSWORD '{verifier}'")
        except DBAPIError as exc:
            raise LedgerError(
                f"cannot create or update the service login {role!r}: the owner needs "
                f"CREATEROLE (or a DBA creates {role!r} WITH LOGIN and grants it "
                f"{GRANTS_ROLE})") from exc
        if (await conn.execute(text("SELECT pg_has_role(:r, current_user, 'MEMBER')"),
                               {"r": role})).scalar():
            raise LedgerError(f"the service login {role!r} is a member of the owner "
                              f"{user_of(str(owner.url))!r}: SET ROLE would give it the "
                              "owner's rights; revoke that membership")
        if role != GRANTS_ROLE:
            await conn.exec_driver_sql(f"GRANT {GRANTS_ROLE} TO {_ident(role)}")
        owners = (await conn.execute(text(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = :r"),
            {"r": role})).scalar()
        if owners:
            raise LedgerError(f"the service login {role!r} owns {owners} ledger tables, so "
                              "grants cannot restrict it; migrate as another user "
                              "(database.migrate_url)")


async def prepare(logins: Logins) -> None:
    """Bring the schema to the code's revision as the owner and keep the login current; where
    this process has no owner URL, check the schema instead."""
    from bot.ledger.repository import brief, make_engine

    if logins.owner is None:
        engine = make_engine(logins.service, pool_size=1)
        try:
            rev = await current_revision(engine)
        except DBAPIError as exc:  # e.g. the login does not exist yet
            raise LedgerError(
                f"cannot read the schema as the service login {logins.role!r} ({brief(exc)}); "
                "run `stackbot db upgrade` with the owner's URL (database.migrate_url) "
                "first") from exc
        finally:
            await engine.dispose()
        if rev != HEAD:
            raise LedgerError(
                f"the database is at revision {rev or 'none'} and this version needs {HEAD}; "
                "run `stackbot db upgrade` with the owner's URL (database.migrate_url)")
        return
    engine = make_engine(logins.owner, pool_size=1)
    try:
        await upgrade(engine)
        if logins.least_privilege:
            await ensure_login(engine, logins.role, logins.password)
        else:
            log.warning("database_owner_as_service", role=logins.role,
                        why="database.app_role is empty: the service can rewrite the trail")
    finally:
        await engine.dispose()
    service = make_engine(logins.service, pool_size=1)
    try:
        await current_revision(service)
    except DBAPIError as exc:  # e.g. a server that wants a password the login has not got
        raise LedgerError(
            f"the service login {logins.role!r} cannot connect ({brief(exc)}): give "
            "database.url as that login with its password, and database.migrate_url as the "
            "owner's URL") from exc
    finally:
        await service.dispose()
