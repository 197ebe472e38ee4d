"""When PostgreSQL cannot take a write, the engine opens nothing it could not audit, keeps
streaming, and writes what it held back once the database answers again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.app import drive
from bot.domain import Mode, UnitOfWork
from bot.engine import Engine
from bot.feeds.replay import ReplayFeed
from bot.ledger.repository import PostgresLedger
from tests.conftest import fetch
from tests.helpers import backtest_parts


class SwitchableLedger:
    """A real ledger and a real unreachable one (connection refused); commits go to the
    unreachable one while ``down`` says so."""

    def __init__(self, up: PostgresLedger, down: PostgresLedger) -> None:
        self.up, self.dead = up, down
        self.engine: Engine | None = None
        self.window = (0, 0)
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.up, name)

    def is_down(self) -> bool:
        n = self.engine.stats.candles if self.engine else 0
        return self.window[0] <= n < self.window[1]

    async def commit(self, unit: UnitOfWork) -> None:
        if self.is_down():
            self.failed += 1
            await self.dead.commit(unit)
        await self.up.commit(unit)

    async def close(self) -> None:
        await self.dead.close()
        await self.up.close()


async def test_no_orders_while_the_ledger_is_down(tmp_path: Path, pg_url: str) -> None:
    settings, clock, feed, broker = backtest_parts(tmp_path, pg_url, 400, 4)
    ledger = SwitchableLedger(PostgresLedger.from_url(pg_url),
                              PostgresLedger.from_url("postgresql://postgres@127.0.0.1:1/none"))
    ledger.window = (100, 250)
    submitted: list[tuple[int, str]] = []
    real_submit = broker.submit

    async def spy_submit(order):  # type: ignore[no-untyped-def]
        submitted.append((engine_ref[0].stats.candles, order.client_order_id))
        return await real_submit(order)

    broker.submit = spy_submit  # type: ignore[method-assign]
    engine_ref: list[Engine] = []

    def hook(engine: Engine) -> None:
        engine_ref.append(engine)
        ledger.engine = engine

    outcome = await drive(settings, "ledgerdownrun1",
                          "ledger-down-test", Mode.BACKTEST, "replay", ["BTC/USDT"], feed,
                          broker, ledger, clock, hook)  # type: ignore[arg-type]
    assert ledger.failed > 0
    assert outcome.summary["candles"] == 400
    # nothing was sent while the ledger could not take the intent
    assert [n for n, _ in submitted if 100 < n < 250] == []
    assert any(n >= 250 for n, _ in submitted)  # trading resumed
    # nothing was lost: every signal of the run reached the ledger once
    sigs = await fetch(pg_url, "SELECT count(*) AS n, count(DISTINCT ts) AS d FROM signals "
                       "WHERE account='ledger-down-test'")
    assert sigs[0]["n"] == sigs[0]["d"] == outcome.summary["signals"]
    # every order that reached the ledger was either sent or cancelled as unauditable
    orders = await fetch(pg_url, "SELECT client_order_id, status FROM orders "
                         "WHERE account='ledger-down-test'")
    sent = {cid for _, cid in submitted}
    for o in orders:
        assert o["client_order_id"] in sent or o["status"] == "cancelled"


class BrokenFeed:
    """A feed that delivers a few candles, then fails the way a revoked API key does."""

    def __init__(self, inner: ReplayFeed, after: int) -> None:
        self.inner, self.after = inner, after

    def resume_after(self, last_ts: dict[str, int]) -> None:
        self.inner.resume_after(last_ts)

    async def stream(self):  # type: ignore[no-untyped-def]
        from bot.errors import AuthenticationFailed

        n = 0
        async for event in self.inner.stream():
            yield event
            n += 1
            if n >= self.after:
                raise AuthenticationFailed("API key revoked")

    async def close(self) -> None:
        return None


async def test_a_broken_feed_fails_the_run_loudly(tmp_path: Path, pg_url: str) -> None:
    import pytest

    from bot.errors import AuthenticationFailed

    settings, clock, replay, broker = backtest_parts(tmp_path, pg_url, 100, 6)
    feed = BrokenFeed(replay, after=30)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await drive(settings, "brokenfeed1", "broken-feed", Mode.BACKTEST, "replay",
                    ["BTC/USDT"], feed, broker, PostgresLedger.from_url(pg_url), clock)  # type: ignore[arg-type]
    runs = await fetch(pg_url, "SELECT status FROM runs WHERE id='brokenfeed1'")
    assert runs == [{"status": "failed"}]
