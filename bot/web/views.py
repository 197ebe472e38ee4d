"""What the console reads from the ledger, one function a view: plain JSON-ready rows.

The console reads; it never writes here. Commands go through ``bot/ledger/control_requests``.
Money stays exact: NUMERIC columns reach the client as decimal strings.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import desc, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.config import Settings
from bot.domain import OrderStatus
from bot.ledger import tables as t
from bot.status import breaker_readings, runs_query

MAX_POINTS = 2_000  # an equity curve is thinned to this many points


def plain(value: Any) -> Any:
    """JSON-ready: Decimal as its exact string, datetimes as ISO 8601."""
    if isinstance(value, Decimal):
        return format(value, "f")  # never '1E+4'

    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _rows(result: Any) -> list[dict[str, Any]]:
    return [plain(dict(r)) for r in result.mappings().all()]


async def status(conn: AsyncConnection, settings: Settings, account: str) -> dict[str, Any]:
    """The trading state and its reason, each breaker's reading against its limit, cash,
    equity, the active ensemble and the newest heartbeat of the bot."""
    state = (await conn.execute(
        select(t.RiskStateRow.state, t.RiskStateRow.reason, t.RiskStateRow.updated_at,
               t.RiskStateRow.detail, t.RiskStateRow.breakers)
        .where(t.RiskStateRow.account == account))).mappings().first()
    acct = (await conn.execute(
        select(t.Account.mode, t.Account.exchange, t.Account.quote, t.Account.cash,
               t.Account.starting_cash, t.Account.updated_at)
        .where(t.Account.account == account))).mappings().first()
    last = (await conn.execute(
        select(t.EquitySnapshotRow.ts, t.EquitySnapshotRow.equity)
        .where(t.EquitySnapshotRow.account == account)
        .order_by(desc(t.EquitySnapshotRow.ts)).limit(1))).mappings().first()
    run = (await conn.execute(
        select(t.Run.id, t.Run.status, t.Run.started_at, t.Run.ended_at, t.Run.strategy)
        .where(t.Run.account == account).order_by(desc(t.Run.started_at)).limit(1)
    )).mappings().first()
    heartbeat = (await conn.execute(  # the newest event by id: the (account, id) index
        select(t.AuditEventRow.recorded_at).where(t.AuditEventRow.account == account)
        .order_by(desc(t.AuditEventRow.id)).limit(1))).scalar()
    breakers = breaker_readings(settings, [{"account": account,
                                           "detail": state["detail"] if state else None,
                                           "breakers": state["breakers"] if state else None}])
    return plain({
        "account": account,
        "state": state["state"] if state else "ACTIVE",
        "reason": state["reason"] if state else "never changed",
        "state_since": state["updated_at"] if state else None,
        "mode": acct["mode"] if acct else None,
        "exchange": acct["exchange"] if acct else None,
        "quote": acct["quote"] if acct else None,
        "cash": acct["cash"] if acct else None,
        "starting_cash": acct["starting_cash"] if acct else None,
        "equity": last["equity"] if last else None,
        "equity_at": last["ts"] if last else None,
        "run": dict(run) if run else None,
        "last_activity": heartbeat,
        "breakers": [{k: v for k, v in b.items() if k != "account"} for b in breakers],
        "ensemble": await active_ensemble(conn),
    })


async def active_ensemble(conn: AsyncConnection) -> str | None:
    return (await conn.execute(
        select(t.ModelVersionRow.ensemble_id).where(t.ModelVersionRow.status == "active")
        .limit(1))).scalar()


async def equity(conn: AsyncConnection, account: str,
                 limit: int = MAX_POINTS) -> list[dict[str, Any]]:
    """The equity curve (oldest first) with its drawdown from the running peak, thinned to at
    most ``limit`` points (every n-th, and always the newest). The peak and the thinning are
    computed in the database, so only the points shown cross the wire."""
    rows = (await conn.execute(text(
        "SELECT ts, equity, peak FROM (SELECT ts, equity, "
        "max(equity) OVER (ORDER BY ts) AS peak, row_number() OVER (ORDER BY ts) AS i, "
        "count(*) OVER () AS n FROM equity_snapshots WHERE account = :account) s "
        "WHERE (i - 1) % ceil(n / CAST(:limit AS numeric)) = 0 OR i = n ORDER BY ts"),
        {"account": account, "limit": max(1, limit)})).all()
    return [{"ts": ts.isoformat(), "equity": format(eq, "f"),
             "drawdown": round(float((peak - eq) / peak), 6) if peak > 0 else 0.0}
            for ts, eq, peak in rows]


async def positions(conn: AsyncConnection, account: str) -> list[dict[str, Any]]:
    return _rows(await conn.execute(
        select(t.PositionRow.symbol, t.PositionRow.quantity, t.PositionRow.avg_price,
               t.PositionRow.realized_pnl, t.PositionRow.updated_at)
        .where(t.PositionRow.account == account, t.PositionRow.quantity != 0)
        .order_by(t.PositionRow.symbol)))


async def orders(conn: AsyncConnection, account: str, working: bool,
                 limit: int) -> list[dict[str, Any]]:
    query = (select(t.OrderRow.client_order_id, t.OrderRow.symbol, t.OrderRow.side,
                    t.OrderRow.order_type, t.OrderRow.quantity, t.OrderRow.limit_price,
                    t.OrderRow.stop_price, t.OrderRow.status, t.OrderRow.filled_qty,
                    t.OrderRow.avg_fill_price, t.OrderRow.reason, t.OrderRow.updated_at)
             .where(t.OrderRow.account == account)
             .order_by(desc(t.OrderRow.updated_at)).limit(limit))
    if working:
        query = query.where(t.OrderRow.status.in_(
            [s.value for s in OrderStatus if not s.is_terminal]))
    return _rows(await conn.execute(query))


async def fills(conn: AsyncConnection, account: str, limit: int) -> list[dict[str, Any]]:
    return _rows(await conn.execute(
        select(t.FillRow.fill_id, t.FillRow.client_order_id, t.FillRow.symbol, t.FillRow.side,
               t.FillRow.quantity, t.FillRow.price, t.FillRow.fee, t.FillRow.fee_currency,
               t.FillRow.ts)
        .where(t.FillRow.account == account).order_by(desc(t.FillRow.ts)).limit(limit)))


async def signals(conn: AsyncConnection, account: str, limit: int) -> list[dict[str, Any]]:
    """The newest signals, each with every member's calibrated p where it has members."""
    return _rows(await conn.execute(
        select(t.SignalRow.symbol, t.SignalRow.ts, t.SignalRow.p_up, t.SignalRow.expected_return,
               t.SignalRow.dispersion, t.SignalRow.price, t.SignalRow.source,
               t.SignalRow.model_version, t.SignalRow.members)
        .where(t.SignalRow.account == account).order_by(desc(t.SignalRow.id)).limit(limit)))


async def runs(conn: AsyncConnection, limit: int, mode: str | None) -> list[dict[str, Any]]:
    return _rows(await conn.execute(runs_query(limit, mode)))


async def audit(conn: AsyncConnection, account: str | None, limit: int,
                before: int | None) -> list[dict[str, Any]]:
    """Audit events, newest first; ``before`` pages by sequence number."""
    query = (select(t.AuditEventRow.seq, t.AuditEventRow.account, t.AuditEventRow.ts,
                    t.AuditEventRow.recorded_at, t.AuditEventRow.kind, t.AuditEventRow.entity,
                    t.AuditEventRow.entity_id, t.AuditEventRow.payload, t.AuditEventRow.hash)
             .order_by(desc(t.AuditEventRow.seq)).limit(limit))
    if account is not None:
        query = query.where(t.AuditEventRow.account == account)
    if before is not None:
        query = query.where(t.AuditEventRow.seq < before)
    return _rows(await conn.execute(query))


async def models(conn: AsyncConnection) -> list[dict[str, Any]]:
    return _rows(await conn.execute(
        select(t.ModelVersionRow.id, t.ModelVersionRow.ensemble_id,
               t.ModelVersionRow.architecture, t.ModelVersionRow.status,
               t.ModelVersionRow.symbols, t.ModelVersionRow.timeframe,
               t.ModelVersionRow.train_start, t.ModelVersionRow.train_end,
               t.ModelVersionRow.metrics, t.ModelVersionRow.created_at,
               t.ModelVersionRow.promoted_at)
        .order_by(desc(t.ModelVersionRow.created_at), t.ModelVersionRow.id)))


async def head_seq(conn: AsyncConnection) -> int:
    """The audit chain's newest sequence number: it moves whenever the ledger changes."""
    return int((await conn.execute(select(t.AuditChainHead.seq))).scalar() or 0)
