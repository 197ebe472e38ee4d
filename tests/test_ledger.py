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


async def test_equity_rows_go_through_copy_text_exactly(ledger: PostgresLedger,
                                                       pg_url: str) -> None:
    """Equity snapshots are COPYed as text (``equity_copy``): every Decimal comes back to the
    last digit, in exponent form too; an account with COPY's special characters and a time
    that is not a whole minute come back as written."""
    from datetime import UTC, datetime

    from bot.domain import EquitySnapshot

    account = "acct\\with\ttab\nand newline"
    await ledger.start_run("copytext0", account, "paper", "sim", ["BTC/USDT"], "1h", "t", {},
                           D(1000))
    cases = [(D("10996.9105228085684050"), D("1207.085703600")), (D("1E+4"), D("0")),
             (D("-0.00000001"), D("123456789012345678901234.5678")), (D("0E-12"), D("-7.5"))]
    times = [1_502_942_400_000, 1_502_942_400_001, 951_868_799_999, 0]
    unit = UnitOfWork()
    unit.equity.extend(EquitySnapshot(account, "copytext0", ts, cash, pv)
                       for ts, (cash, pv) in zip(times, cases, strict=True))
    await ledger.commit(unit)
    rows = await fetch(pg_url, "SELECT account, ts, cash, positions_value, equity FROM "
                       "equity_snapshots WHERE run_id = 'copytext0' ORDER BY id")
    assert [(r["account"], r["ts"], r["cash"], r["positions_value"], r["equity"])
            for r in rows] == [
        (account, datetime.fromtimestamp(ts / 1000, UTC), cash, pv, cash + pv)
        for ts, (cash, pv) in zip(times, cases, strict=True)]


async def test_signals_and_audit_rows_come_back_exactly(ledger: PostgresLedger,
                                                        pg_url: str) -> None:
    """Signals and audit events (COPYed in the binary format): floats to the last bit (NaN
    and infinities too), a missing regime as NULL, members and payloads with tabs, newlines,
    backslashes, quotes and non-ASCII come back as written, and the chain still verifies."""
    import json
    import math
    from datetime import UTC, datetime

    from bot.domain import Regime, Signal
    from bot.ledger.audit import verify_chain

    account = "acct\\copy\ttext"
    await ledger.start_run("copytext1", account, "paper", "sim", ["BTC/USDT"], "1h", "t", {},
                           D(1000))
    signals = [
        Signal("BTC/USDT", 1_502_942_400_000, 0.1 + 0.2, -1e-300, "ens\tmble", "v\\1",
               dispersion=5e-324, regime=Regime.BULL, price=12345.678901234567,
               members=(("tcn\n1", 0.25), ("é\"x", 1 / 3))),
        Signal("BTC/USDT", 1_502_942_400_001, 0.5, math.inf, "s", "m", regime=Regime.UNKNOWN,
               price=-math.inf, dispersion=math.nan),
    ]
    payload = {"reason": "tab\there, newline\nthere, back\\slash, \"quote\", ünï", "n": 1.5,
               "nested": {"x": [1, None, True]}}
    unit = UnitOfWork()
    unit.signals.extend(("copytext1", account, s) for s in signals)
    unit.audit.append(AuditEvent("test.copy\ttext", "ent\\ity", "id\nwith newline", account,
                                 "copytext1", 1_502_942_400_123, payload))
    await ledger.commit(unit)
    rows = await fetch(pg_url, "SELECT * FROM signals WHERE run_id = 'copytext1' ORDER BY id")
    assert [r["account"] for r in rows] == [account, account]
    got = rows[0]
    assert (got["p_up"], got["expected_return"], got["dispersion"], got["price"]) == (
        0.1 + 0.2, -1e-300, 5e-324, 12345.678901234567)
    assert (got["source"], got["model_version"], got["regime"]) == ("ens\tmble", "v\\1", 2)
    assert got["ts"] == datetime(2017, 8, 17, 4, tzinfo=UTC)
    assert json.loads(got["members"]) == {"tcn\n1": 0.25, "é\"x": 1 / 3}
    second = rows[1]
    assert second["regime"] is None and second["members"] is None
    assert second["expected_return"] == math.inf and second["price"] == -math.inf
    assert math.isnan(second["dispersion"])
    audit = await fetch(pg_url, "SELECT * FROM audit_events WHERE run_id = 'copytext1' "
                        "AND kind LIKE 'test.%'")
    assert len(audit) == 1
    a = audit[0]
    assert (a["kind"], a["entity"], a["entity_id"], a["account"]) == (
        "test.copy\ttext", "ent\\ity", "id\nwith newline", account)
    assert json.loads(a["payload"]) == payload
    assert a["ts"] == datetime(2017, 8, 17, 4, 0, 0, 123000, tzinfo=UTC)
    assert (await verify_chain(ledger.engine)).ok


async def test_signals_and_equity_must_refer_to_a_run(ledger: PostgresLedger,
                                                      pg_url: str) -> None:
    """The run reference of signals and equity snapshots (checked per statement since
    migration 0011, as the foreign key did per row): rows of a run not in ``runs`` are refused
    and the unit keeps nothing; a run that rows refer to cannot be deleted or renamed."""
    from bot.domain import EquitySnapshot, Signal

    await ledger.start_run("refrun01", "acct-ref", "paper", "sim", ["BTC/USDT"], "1h", "t", {},
                           D(1000))
    good = UnitOfWork()
    good.signals.append(("refrun01", "acct-ref", Signal("BTC/USDT", 0, 0.5, 0.0, "s", "m")))
    good.equity.append(EquitySnapshot("acct-ref", "refrun01", 0, D(1000), D(0)))
    await ledger.commit(good)  # the rule lets a real run's rows through
    first, second = UnitOfWork(), UnitOfWork()
    for unit in (first, second):
        unit.audit.append(AuditEvent("test.ref", "t", "ref-1", "acct-ref", "refrun01", 0, {}))
    first.signals.append(("nosuchrun", "acct-ref", Signal("BTC/USDT", 0, 0.5, 0.0, "s", "m")))
    second.equity.append(EquitySnapshot("acct-ref", "nosuchrun", 0, D(1000), D(0)))
    for unit, table in ((first, "signals"), (second, "equity_snapshots")):
        with pytest.raises(LedgerError, match=f'"{table}" refers to run "nosuchrun"'):
            await ledger.commit(unit)
    assert await fetch(pg_url, "SELECT 1 FROM audit_events WHERE entity_id = 'ref-1'") == []
    assert len(await fetch(pg_url, "SELECT 1 FROM signals WHERE run_id = 'refrun01'")) == 1
    conn = await asyncpg.connect(plain_url(async_url(pg_url)))
    try:
        for sql in ("DELETE FROM runs WHERE id = 'refrun01'",
                    "UPDATE runs SET id = 'renamed1' WHERE id = 'refrun01'"):
            with pytest.raises(asyncpg.ForeignKeyViolationError, match="still referred to"):
                await conn.execute(sql)
    finally:
        await conn.close()


async def test_an_order_upsert_keeps_the_latest_state_and_never_rewrites_a_finished_order(
        ledger: PostgresLedger, pg_url: str) -> None:
    """Orders go in through one driver statement (``ORDER_UPSERT``): a later state of a live
    order replaces the earlier one, column for column; a finished order stays as it finished."""
    from bot.domain import Order, OrderStatus, OrderType

    await ledger.start_run("upsert01", "acct-up", "paper", "sim", ["BTC/USDT"], "1h", "t", {},
                           D(1000))
    base = Order("up-1", "acct-up", "upsert01", "BTC/USDT", Side.BUY, OrderType.STOP, D("0.5"),
                 OrderStatus.OPEN, 1_000, 1_000, 900, "m", "entry", stop_price=D("99.5"))
    for state in (base, base.transition(OrderStatus.PARTIALLY_FILLED, 2_000, "half"),
                  base.transition(OrderStatus.CANCELLED, 3_000, "done")):
        unit = UnitOfWork()
        unit.orders[state.client_order_id] = state
        await ledger.commit(unit)
    late = UnitOfWork()  # a stale copy arriving after the order finished
    late.orders["up-1"] = base.transition(OrderStatus.PARTIALLY_FILLED, 4_000, "stale")
    await ledger.commit(late)
    row = (await fetch(pg_url, "SELECT * FROM orders WHERE client_order_id = 'up-1'"))[0]
    assert (row["status"], row["status_reason"], row["stop_price"], row["quantity"],
            row["order_type"], row["reduce_only"]) == ("cancelled", "done", D("99.5"),
                                                       D("0.5"), "stop", False)
    assert row["updated_at"].timestamp() == 3.0 and row["signal_ts"].timestamp() == 0.9
    # many orders in one statement (a column an array): NULLs and exact decimals per row
    many = UnitOfWork()
    for i, (limit, venue_id) in enumerate([(D("100.123456789"), None), (None, "x-2"),
                                           (D("0.00000001"), "x-3")]):
        o = Order(f"up-m{i}", "acct-up", "upsert01", ("BTC/USDT", "ETH/USDT")[i % 2], Side.SELL,
                  OrderType.LIMIT, D("1.5") + i, OrderStatus.OPEN, 5_000 + i, 5_000 + i, 4_000,
                  "m", f"r{i}", limit_price=limit, exchange_order_id=venue_id,
                  reduce_only=i == 1)
        many.orders[o.client_order_id] = o
    many.orders["up-1"] = base.transition(OrderStatus.PARTIALLY_FILLED, 6_000, "stale again")
    await ledger.commit(many)
    rows = await fetch(pg_url, "SELECT * FROM orders WHERE client_order_id LIKE 'up-%' "
                       "ORDER BY client_order_id")
    assert [(r["client_order_id"], r["symbol"], r["limit_price"], r["exchange_order_id"],
             r["quantity"], r["reduce_only"], r["reason"], r["status"]) for r in rows] == [
        ("up-1", "BTC/USDT", None, None, D("0.5"), False, "entry", "cancelled"),
        ("up-m0", "BTC/USDT", D("100.123456789"), None, D("1.5"), False, "r0", "open"),
        ("up-m1", "ETH/USDT", None, "x-2", D("2.5"), True, "r1", "open"),
        ("up-m2", "BTC/USDT", D("0.00000001"), "x-3", D("3.5"), False, "r2", "open")]


async def test_a_unit_with_more_audit_rows_than_one_call_takes_is_one_chain(
        ledger: PostgresLedger, pg_url: str) -> None:
    """A unit's audit rows go to ``audit_append`` in calls of ``AUDIT_CALL_ROWS``; the calls
    of one transaction continue one chain: every row once, in order, seqs without a gap, and
    the chain verifies."""
    from bot.ledger.audit import verify_chain
    from bot.ledger.repository import AUDIT_CALL_ROWS

    n = 2 * AUDIT_CALL_ROWS + 17
    unit = UnitOfWork(audit=[AuditEvent("test.many", "e", str(i), "acct-many", "r", i,
                                        {"i": i}) for i in range(n)])
    await ledger.commit(unit)
    rows = await fetch(pg_url, "SELECT entity_id, seq FROM audit_events WHERE account = "
                               "'acct-many' ORDER BY seq")
    assert [r["entity_id"] for r in rows] == [str(i) for i in range(n)]
    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(seqs[0], seqs[0] + n))
    engine = make_engine(pg_url)
    try:
        assert (await verify_chain(engine)).ok
    finally:
        await engine.dispose()
