"""The ledger: schema = migrations, one transaction per unit, append-only audit trail."""

from __future__ import annotations

from decimal import Decimal as D

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bot.domain import AuditEvent, Fill, Side, UnitOfWork
from bot.errors import ConfigError, LedgerError
from bot.ledger.migrate import head_revision, upgrade
from bot.ledger.repository import PostgresLedger, make_engine
from bot.ledger.tables import Base
from bot.ledger.urls import async_url, plain_url
from tests.conftest import fetch


def test_head_constant_matches_alembic() -> None:
    from bot.ledger.migrate import HEAD

    assert head_revision() == HEAD


async def test_migrations_create_exactly_the_model_schema(fresh_db: str) -> None:
    engine = make_engine(fresh_db)
    assert await upgrade(engine) == head_revision()
    assert await upgrade(engine) == head_revision()  # idempotent

    def diff(conn):  # type: ignore[no-untyped-def]
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
    await engine.dispose()


async def test_unit_commits_all_or_nothing(ledger: PostgresLedger, pg_url: str) -> None:
    unit = UnitOfWork()
    unit.audit.append(AuditEvent("test.atomic", "t", "atomic-1", "acct-atomic", "r", 0, {}))
    # a fill for an order that does not exist violates the foreign key
    unit.fills.append(Fill("nope:1", "nope", "acct-atomic", "BTC/USDT", Side.BUY, D(1), D(1),
                           D(0), "USDT", 0))
    with pytest.raises(LedgerError, match="nothing of it was kept"):
        await ledger.commit(unit)
    rows = await fetch(pg_url, "SELECT * FROM audit_events WHERE entity_id = 'atomic-1'")
    assert rows == []


async def test_audit_trail_is_append_only(ledger: PostgresLedger, pg_url: str) -> None:
    unit = UnitOfWork()
    unit.audit.append(AuditEvent("test.append", "t", "append-1", "acct-append", "r", 0, {"a": 1}))
    await ledger.commit(unit)
    conn = await asyncpg.connect(plain_url(async_url(pg_url)))
    try:
        for sql in ("UPDATE audit_events SET kind = 'x' WHERE entity_id = 'append-1'",
                    "DELETE FROM audit_events WHERE entity_id = 'append-1'",
                    "TRUNCATE audit_events"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(sql)
    finally:
        await conn.close()
    rows = await fetch(pg_url, "SELECT kind FROM audit_events WHERE entity_id = 'append-1'")
    assert rows == [{"kind": "test.append"}]


async def test_unreachable_database_is_a_ledger_error() -> None:
    led = PostgresLedger.from_url("postgresql://postgres@127.0.0.1:1/nothing")
    unit = UnitOfWork()
    unit.audit.append(AuditEvent("x", "t", "1", "a", "r", 0, {}))
    with pytest.raises(LedgerError):
        await led.commit(unit)
    await led.close()


def test_only_postgresql_urls() -> None:
    with pytest.raises(ConfigError, match="PostgreSQL is the only dialect"):
        async_url("sqlite:///tmp/x.db")
    assert async_url("postgresql://u@h:5/d") == "postgresql+asyncpg://u@h:5/d"
