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
