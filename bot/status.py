"""``stackbot status``: what the ledger says, whether or not an instance is running."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import desc, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.config import Settings
from bot.domain import OrderStatus, RiskState
from bot.errors import LedgerError
from bot.ledger import tables as t


@asynccontextmanager
async def _reading(settings: Settings) -> AsyncIterator[AsyncConnection]:
    """A connection to the ledger as the service login; any failure is a ``LedgerError``."""
    from bot.app import database_logins_of
    from bot.ledger.logins import prepare
    from bot.ledger.repository import make_engine

    logins = database_logins_of(settings)
    engine = make_engine(logins.service)
    try:
        await prepare(logins)
        async with engine.connect() as conn:
            yield conn
    except LedgerError:
        raise
    except Exception as exc:
        raise LedgerError(f"cannot read the ledger: {exc}") from exc
    finally:
        await engine.dispose()


async def read_status(settings: Settings, limit: int = 10) -> dict[str, list[dict[str, Any]]]:
    async with _reading(settings) as conn:
        return await _status_of(conn, settings, limit)


async def _status_of(conn: AsyncConnection, settings: Settings,
                     limit: int) -> dict[str, list[dict[str, Any]]]:
    working = [s.value for s in OrderStatus if not s.is_terminal]
    runs = (await conn.execute(
        select(t.Run.id, t.Run.account, t.Run.mode, t.Run.status, t.Run.started_at,
               t.Run.ended_at, t.Run.symbols).order_by(desc(t.Run.started_at))
        .limit(limit))).mappings().all()
    accounts = (await conn.execute(
        select(t.Account.account, t.Account.mode, t.Account.cash, t.Account.updated_at)
        .where(t.Account.mode != "backtest"))).mappings().all()
    positions = (await conn.execute(
        select(t.PositionRow.account, t.PositionRow.symbol, t.PositionRow.quantity,
               t.PositionRow.avg_price, t.PositionRow.realized_pnl)
        .where(t.PositionRow.quantity != 0, ~t.PositionRow.account.like("backtest:%"))
    )).mappings().all()
    states = (await conn.execute(
        select(t.RiskStateRow.account, t.RiskStateRow.state, t.RiskStateRow.reason,
               t.RiskStateRow.updated_at).order_by(t.RiskStateRow.account)
    )).mappings().all()
    memories = (await conn.execute(
        select(t.RiskStateRow.account, t.RiskStateRow.detail, t.RiskStateRow.breakers)
        .where(~t.RiskStateRow.account.like("backtest:%"))
        .order_by(t.RiskStateRow.account))).mappings().all()
    orders = (await conn.execute(
        select(t.OrderRow.client_order_id, t.OrderRow.account, t.OrderRow.symbol,
               t.OrderRow.side, t.OrderRow.quantity, t.OrderRow.status)
        .where(t.OrderRow.status.in_(working)))).mappings().all()
    known = {r["account"] for r in states}
    trading = [dict(r) for r in states] + [
        {"account": a["account"], "state": "ACTIVE", "reason": "never changed",
         "updated_at": a["updated_at"]} for a in accounts if a["account"] not in known]
    return {
        "trading state": trading,
        "recent runs": [dict(r) for r in runs],
        "accounts": [dict(r) for r in accounts],
        "open positions": [dict(r) for r in positions],
        "working orders": [dict(r) for r in orders],
        "breakers": breaker_readings(settings, memories),
    }


SUMMARY_KEYS = ("candles", "trades", "final_equity", "return_pct", "max_drawdown_pct")


async def read_runs(settings: Settings, limit: int = 20,
                    mode: str | None = None) -> list[dict[str, Any]]:
    """``stackbot runs``: the newest runs, with what their summaries say (a run still going,
    or one that died without finishing, has no summary: its fields are empty)."""
    async with _reading(settings) as conn:
        return await runs_of(conn, limit, mode)


def runs_query(limit: int, mode: str | None) -> Any:
    """The newest runs with their summaries (``stackbot runs``, the console's runs)."""
    query = (select(t.Run.id, t.Run.account, t.Run.mode, t.Run.strategy, t.Run.status,
                    t.Run.started_at, t.Run.ended_at, t.Run.symbols, t.Run.timeframe,
                    t.Run.summary).order_by(desc(t.Run.started_at)).limit(limit))
    return query if mode is None else query.where(t.Run.mode == mode)


async def runs_of(conn: AsyncConnection, limit: int, mode: str | None) -> list[dict[str, Any]]:
    """``runs_query``'s rows with the summary's headline fields as columns of their own."""
    rows = (await conn.execute(runs_query(limit, mode))).mappings().all()
    out = []
    for r in rows:
        summary = r["summary"] or {}
        row = {k: v for k, v in r.items() if k != "summary"}
        row["symbols"] = ",".join(r["symbols"] or [])
        row.update({k: summary.get(k) for k in SUMMARY_KEYS})
        out.append(row)
    return out


def breaker_readings(settings: Settings, rows: Any) -> list[dict[str, Any]]:
    """Each breaker's reading against its limit, from the memory the engine last committed
    (the same restore a restarting engine does)."""
    from bot.domain import timeframe_ms
    from risk.manager import RiskManager

    out = []
    for r in rows:
        risk = RiskManager(settings.risk, timeframe_ms(settings.timeframe))
        risk.restore(RiskState.restore(r["detail"]) if r["detail"] else None,
                     r["breakers"] or None)
        for b in risk.readings():
            out.append({"account": r["account"], "breaker": b.name,
                        "reading": round(b.reading, 6), "limit": round(b.limit, 6),
                        "unit": b.unit})
        for block, why in risk.blocks_explained().items():
            out.append({"account": r["account"], "breaker": f"block {block}", "reading": 1,
                        "limit": 0, "unit": why})
    return out
