"""Issue 17: the service logs in as its own least-privilege login, never as the schema owner,
so no ``RESET ROLE`` or ``SET ROLE`` gives it the right to rewrite the audit trail. Against a
real PostgreSQL (the local server, or the embedded one)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bot.errors import ConfigError, LedgerError
from bot.ledger.logins import database_logins, prepare, scram_verifier, user_of
from bot.ledger.migrate import HEAD
from bot.ledger.urls import async_url, plain_url
from tests.conftest import fetch


def _with_login(url: str, user: str, password: str | None = None) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    auth = user + (f":{password}" if password else "")
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}" + (
        f":{parts.port}" if parts.port else "")))


async def _attempts(url: str, statements: list[str]) -> list[str]:
    """Each statement on one connection of ``url``; what each returned, or the error class."""
    conn = await asyncpg.connect(plain_url(async_url(url)))
    outcomes = []
    try:
        for sql in statements:
            try:
                await conn.execute(sql)
                outcomes.append("done")
            except asyncpg.PostgresError as exc:
                outcomes.append(type(exc).__name__)
    finally:
        await conn.close()
    return outcomes


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("STACKBOT_")}
    return subprocess.run([sys.executable, "-m", "bot", *args], env={**full, **env},
                          capture_output=True, text=True, timeout=180)


def test_the_service_login_cannot_reset_role_to_gain_the_owners_rights(
        fresh_db: str, tmp_path: Path) -> None:
    """``db upgrade`` as the owner creates the login; the service's own connection then holds
    no UPDATE, DELETE or TRUNCATE on ``audit_events`` whatever it resets or sets."""
    owner = user_of(fresh_db)
    done = _cli("db", "upgrade", "--data-dir", str(tmp_path), STACKBOT_DATABASE_URL=fresh_db)
    assert done.returncode == 0, done.stderr
    assert f"revision {HEAD}" in done.stdout and "'stackbot_app'" in done.stdout

    service = database_logins(fresh_db, None, "stackbot_app").service
    assert user_of(service) == "stackbot_app" and urlsplit(service).password is None
    who = asyncio.run(_who(service))
    assert who == ("stackbot_app", "stackbot_app")  # a login of its own, not SET ROLE

    tamper = ["UPDATE audit_events SET kind = 'x'", "DELETE FROM audit_events",
              "TRUNCATE audit_events", "UPDATE audit_chain_head SET seq = 0"]
    assert asyncio.run(_attempts(service, ["RESET ROLE", *tamper])) == \
        ["done"] + ["InsufficientPrivilegeError"] * len(tamper)
    # nor can it become the owner, by any route PostgreSQL offers
    for escape in (f'SET ROLE "{owner}"', f'SET SESSION AUTHORIZATION "{owner}"',
                   "SET session_replication_role = replica"):
        assert asyncio.run(_attempts(service, [escape])) == ["InsufficientPrivilegeError"], escape
    # what the service needs still works
    assert asyncio.run(_attempts(service, [
        "INSERT INTO audit_events (account, run_id, ts, kind, entity, entity_id, payload) "
        "VALUES ('a', 'r', now(), 'test.kind', 'e', '1', '{}')",
        "UPDATE orders SET status = status"])) == ["done", "done"]

    # the owner can still migrate: take the schema seven steps back (0012 only redefines a
    # function 0010 made; 0013 replaces 0010's inbox and its function), then upgrade again
    asyncio.run(_attempts(fresh_db, [
        "DROP FUNCTION audit_append(text)",  # what 0013 added
        *(f"DROP TRIGGER {table}_run_ref_{event} ON {table}"  # what 0011 changed and added
          for table in ("signals", "equity_snapshots") for event in ("insert", "update")),
        "DROP TRIGGER runs_referenced_delete ON runs",
        "DROP TRIGGER runs_referenced_update ON runs",
        "DROP FUNCTION run_refs_exist()", "DROP FUNCTION runs_still_referenced()",
        *(f"ALTER TABLE {table} ADD CONSTRAINT {table}_run_id_fkey FOREIGN KEY (run_id) "
          "REFERENCES runs(id)" for table in ("signals", "equity_snapshots")),
        "DROP TRIGGER audit_events_chain ON audit_events",  # what 0010 changed and added
        "CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events FOR EACH ROW "
        "EXECUTE FUNCTION audit_events_chain()",
        "DROP FUNCTION audit_batch_trusted()",
        "DROP TABLE cash_flows",  # what 0009 added
        "ALTER TABLE positions DROP COLUMN liquidation_price",
        "ALTER TABLE signals DROP COLUMN members",  # what 0008 added
        "DROP TRIGGER audit_events_chain_head ON audit_events",  # what 0007 added
        "DROP FUNCTION audit_events_chain_head()",
        "UPDATE alembic_version SET version_num = '0006'"]))
    again = _cli("db", "upgrade", "--data-dir", str(tmp_path), STACKBOT_DATABASE_URL=fresh_db)
    assert again.returncode == 0 and f"revision {HEAD}" in again.stdout, again.stderr
    # the re-created chain trigger runs for the service, and moves the head
    assert asyncio.run(_attempts(service, [
        "INSERT INTO audit_events (account, run_id, ts, kind, entity, entity_id, payload) "
        "VALUES ('a', 'r', now(), 'test.kind', 'e', '2', '{}')"])) == ["done"]
    verified = _cli("audit", "verify", STACKBOT_DATABASE_URL=fresh_db)
    assert verified.returncode == 0 and "audit chain intact" in verified.stdout, verified.stderr


async def _who(url: str) -> tuple[str, str]:
    conn = await asyncpg.connect(plain_url(async_url(url)))
    try:
        row = await conn.fetchrow("SELECT current_user AS c, session_user AS s")
        return row["c"], row["s"]
    finally:
        await conn.close()


def test_compose_split_the_bot_holds_only_the_login(fresh_db: str, tmp_path: Path) -> None:
    """Compose: a one-shot migration holds the owner's URL and the login's; the bot holds only
    the login's. The login's password reaches PostgreSQL as a SCRAM verifier (PostgreSQL keeps
    a verifier it is given and hashes anything else), and the bot, given a schema that is
    behind, refuses to start and says how to upgrade it."""
    role = f"sb_login_{uuid.uuid4().hex[:8]}"
    password = f"Pw-{uuid.uuid4().hex}"
    login = _with_login(fresh_db, role, password)
    try:
        # the bot alone first: nothing migrated, and it cannot migrate
        with pytest.raises(LedgerError, match="run `stackbot db upgrade` with the owner"):
            asyncio.run(prepare(database_logins(login, None, role)))
        refused = _cli("db", "upgrade", "--data-dir", str(tmp_path), STACKBOT_DATABASE_URL=login,
                       STACKBOT_DATABASE_APP_ROLE=role)
        assert refused.returncode == 2 and "database.migrate_url" in refused.stderr
        assert password not in refused.stdout + refused.stderr

        done = _cli("db", "upgrade", "--data-dir", str(tmp_path), STACKBOT_DATABASE_URL=login,
                    STACKBOT_DATABASE_MIGRATE_URL=fresh_db, STACKBOT_DATABASE_APP_ROLE=role)
        assert done.returncode == 0, done.stderr
        assert password not in done.stdout + done.stderr
        [auth] = asyncio.run(fetch(fresh_db, "SELECT rolpassword, rolcanlogin, rolsuper FROM "
                                   "pg_authid WHERE rolname = $1", role))
        assert auth["rolcanlogin"] and not auth["rolsuper"]
        stored = auth["rolpassword"]
        salt = __import__("base64").b64decode(stored.split("$")[1].split(":")[1])
        assert stored == scram_verifier(password, salt)

        asyncio.run(prepare(database_logins(login, None, role)))  # now current: starts
        assert asyncio.run(_who(login)) == (role, role)
        assert asyncio.run(_attempts(login, ["RESET ROLE", "DELETE FROM audit_events"])) == \
            ["done", "InsufficientPrivilegeError"]
    finally:
        asyncio.run(_attempts(fresh_db, [f'DROP OWNED BY "{role}"',
                                         f'DROP ROLE IF EXISTS "{role}"']))


def test_a_login_that_could_become_the_owner_is_refused(fresh_db: str) -> None:
    owner = user_of(fresh_db)
    role = f"sb_bad_{uuid.uuid4().hex[:8]}"
    asyncio.run(
        _attempts(fresh_db, [f'CREATE ROLE "{role}" LOGIN', f'GRANT "{owner}" TO "{role}"'])
    )
    try:
        with pytest.raises(LedgerError, match="member of the owner"):
            asyncio.run(prepare(database_logins(_with_login(fresh_db, role), fresh_db, role)))
    finally:
        asyncio.run(
            _attempts(fresh_db, [f'DROP OWNED BY "{role}"', f'DROP ROLE IF EXISTS "{role}"'])
        )


def test_which_url_is_which() -> None:
    owner, login = "postgresql://own:o1@h/db", "postgresql://stackbot_app:p1@h/db"
    assert database_logins(login, owner, "stackbot_app") == type(
        database_logins(login, owner, "stackbot_app")
    )(owner, login, "stackbot_app", "p1")
    assert database_logins(login, None, "stackbot_app").owner is None
    derived = database_logins(owner, None, "stackbot_app")
    assert derived.owner == owner and derived.service == "postgresql://stackbot_app@h/db"
    with pytest.raises(ConfigError, match="database.app_role"):
        database_logins("postgresql://other:p@h/db", owner, "stackbot_app")
