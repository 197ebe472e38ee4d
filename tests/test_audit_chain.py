"""Tamper evidence: the audit trail is a hash chain kept by the database; UPDATE and DELETE are
refused; a row altered with the triggers switched off is caught by `stackbot audit verify`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from bot.cli import app
from bot.ledger.urls import async_url, plain_url
from tests.helpers import write_series


async def _sql(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(plain_url(async_url(url)))
    try:
        for s in statements:
            await conn.execute(s)
    finally:
        await conn.close()


def test_chain_verifies_then_catches_tampering(fresh_db: str, tmp_path: Path) -> None:
    runner = CliRunner()
    data = write_series(tmp_path, "BTC/USDT", 300, seed=8)
    assert runner.invoke(app, ["backtest", "--data", str(data), "--timeframe", "1h",
                               "--db", fresh_db]).exit_code == 0
    ok = runner.invoke(app, ["audit", "verify", "--db", fresh_db])
    assert ok.exit_code == 0 and "audit chain intact" in ok.output
    # the application cannot rewrite history
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        asyncio.run(_sql(fresh_db, "UPDATE audit_events SET kind='x' WHERE seq = 5"))
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        asyncio.run(_sql(fresh_db, "DELETE FROM audit_events WHERE seq = 5"))
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        asyncio.run(_sql(fresh_db, "UPDATE audit_chain_head SET seq = 1"))
    # an owner switches the triggers off and edits a row: the chain names it
    asyncio.run(_sql(fresh_db, "SET session_replication_role = replica",
                     "UPDATE audit_events SET payload = '{\"quantity\": \"999\"}' WHERE seq = 7"))
    bad = runner.invoke(app, ["audit", "verify", "--db", fresh_db])
    assert bad.exit_code == 1
    assert "BROKEN at seq 7" in bad.output and "altered" in bad.output


def test_deleting_the_tail_is_caught(fresh_db: str, tmp_path: Path) -> None:
    runner = CliRunner()
    data = write_series(tmp_path, "BTC/USDT", 200, seed=9)
    assert runner.invoke(app, ["backtest", "--data", str(data), "--timeframe", "1h",
                               "--db", fresh_db]).exit_code == 0
    asyncio.run(_sql(fresh_db, "SET session_replication_role = replica",
                     "DELETE FROM audit_events WHERE seq = (SELECT max(seq) FROM audit_events)"))
    bad = runner.invoke(app, ["audit", "verify", "--db", fresh_db])
    assert bad.exit_code == 1 and "rows removed from the end" in bad.output


def test_the_service_role_cannot_rewrite_the_audit_trail(fresh_db: str, tmp_path: Path) -> None:
    """Migrations run as the owner; the service works as ``stackbot_app``, which may insert
    audit rows (and so advance the chain) but holds no UPDATE, DELETE or TRUNCATE on them,
    so a tampering attempt fails on privileges before the triggers are even asked."""
    runner = CliRunner()
    data = write_series(tmp_path, "BTC/USDT", 200, seed=9)
    result = runner.invoke(app, ["backtest", "--data", str(data), "--timeframe", "1h",
                                 "--db", fresh_db])
    assert result.exit_code == 0, result.output  # the whole run wrote as the app role

    async def as_app(statement: str) -> str:
        conn = await asyncpg.connect(plain_url(async_url(fresh_db)))
        try:
            await conn.execute("SET ROLE stackbot_app")
            await conn.execute(statement)
            return "done"
        except asyncpg.PostgresError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            await conn.close()

    for statement in ("UPDATE audit_events SET kind = 'x'", "DELETE FROM audit_events",
                      "TRUNCATE audit_events", "UPDATE audit_chain_head SET seq = 0",
                      "DELETE FROM orders"):
        outcome = asyncio.run(as_app(statement))
        assert outcome.startswith("InsufficientPrivilegeError"), (statement, outcome)
    # what the service needs still works under the role
    assert asyncio.run(as_app("UPDATE orders SET status = status")) == "done"
    assert asyncio.run(as_app(
        "INSERT INTO audit_events (account, run_id, ts, kind, entity, entity_id, payload) "
        "VALUES ('a', 'r', now(), 'test.kind', 'e', '1', '{}')")) == "done"
    assert runner.invoke(app, ["audit", "verify", "--db", fresh_db]).exit_code == 0
