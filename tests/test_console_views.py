"""The console's equity view on hand-made snapshots: the drawdown from the running peak, and
the thinning that keeps every n-th point and always the newest (both done in SQL)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bot.ledger.repository import make_engine
from bot.web import views


def test_equity_drawdown_and_thinning(pg_url: str) -> None:
    account = f"views-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex
    equities = ["100", "110", "99", "120", "108", "130", "117"]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    async def go() -> tuple[list[dict[str, object]], list[dict[str, object]], list[object]]:
        engine = make_engine(pg_url)
        try:
            async with engine.begin() as conn:
                from sqlalchemy import text

                await conn.execute(text(
                    "INSERT INTO runs (id, account, mode, exchange, symbols, timeframe, strategy, "
                    "status, config) VALUES (:id, :a, 'paper', 'x', '{}', '1h', 's', 'running', "
                    "'{}')"), {"id": run, "a": account})
                for i, e in enumerate(equities):
                    await conn.execute(text(
                        "INSERT INTO equity_snapshots (account, run_id, ts, cash, "
                        "positions_value, equity) VALUES (:a, :r, :ts, :e, 0, :e)"),
                        {"a": account, "r": run, "ts": t0 + timedelta(hours=i),
                         "e": Decimal(e)})
            async with engine.connect() as conn:
                whole = await views.equity(conn, account, 100)
                thin = await views.equity(conn, account, 3)
                empty = await views.equity(conn, "nobody", 3)
            return whole, thin, empty
        finally:
            await engine.dispose()

    whole, thin, empty = asyncio.run(go())
    assert [p["equity"] for p in whole] == equities
    # peaks 100, 110, 110, 120, 120, 130, 130
    assert [p["drawdown"] for p in whole] == [0.0, 0.0, 0.1, 0.0, 0.1, 0.0, 0.1]
    # 7 points into 3: every 3rd (1st, 4th, 7th); the drawdowns still use every point's peak
    assert [p["equity"] for p in thin] == ["100", "120", "117"]
    assert [p["drawdown"] for p in thin] == [0.0, 0.0, 0.1]
    assert empty == []
