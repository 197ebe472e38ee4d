"""Live path against a loopback server speaking Binance's REST API, through ccxt's real
``binance`` class: closed candles only, exactly once, the paper engine end to end, SIGTERM
within 5 s, and a restart that duplicates nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.clock import WallClock
from bot.config import ExchangeSettings
from bot.domain import Candle, FeedState, FeedStatus, Gap, Warmup
from bot.exchange.client import make_exchange
from bot.feeds.live import CloseTracker, LiveFeed
from bot.sim.binance import SimBinance, build, start_server
from tests.conftest import fetch

M = 60_000


# ---- the pure close rule ----------------------------------------------------------------
def row(ts: int, close: float = 100.0) -> list[float]:
    return [ts, 100.0, max(101.0, close), min(99.0, close), close, 5.0]


def test_forming_candle_is_not_emitted_until_newer_or_time_passed() -> None:
    t = CloseTracker("BTC/USDT", "1m")
    assert [c.ts for c in t.closed([row(0), row(M)], exchange_now=M + 10)] == [0]
    assert [c.ts for c in t.closed([row(0), row(M)], exchange_now=2 * M)] == [0, M]


def test_each_candle_exactly_once_in_order_with_gaps() -> None:
    t = CloseTracker("BTC/USDT", "1m")
    first = t.accept(t.closed([row(M), row(0), row(2 * M)], None))
    assert [e.ts for e in first if isinstance(e, Candle)] == [0, M]
    again = t.accept(t.closed([row(0), row(M), row(2 * M), row(5 * M), row(6 * M)], None))
    assert [type(e).__name__ for e in again] == ["Candle", "Gap", "Candle"]
    gap = again[1]
    assert isinstance(gap, Gap) and gap.missing == 2
    assert t.accept(t.closed([row(5 * M), row(6 * M)], None)) == []


def test_malformed_streamed_candle_is_dropped() -> None:
    t = CloseTracker("BTC/USDT", "1m")
    bad = [0, 100.0, 90.0, 99.0, 100.0, 5.0]  # high below open
    out = t.closed([bad, row(M), row(2 * M)], None)
    assert [c.ts for c in out] == [M]


# ---- against the simulator --------------------------------------------------------------
@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimBinance, int]]:
    s = build(["BTC/USDT", "ETH/USDT"], "1m", speed=60.0, history=300, seed=11)
    runner, port = await start_server(s)
    yield s, port
    await runner.cleanup()


async def test_live_rest_feed_through_ccxt(sim: tuple[SimBinance, int]) -> None:
    s, port = sim
    cfg = ExchangeSettings(url=f"http://127.0.0.1:{port}", feed="rest", poll_interval=0.1)
    ex = make_exchange(cfg, with_ws=False)
    feed = LiveFeed(ex, ["BTC/USDT", "ETH/USDT"], "1m", cfg, WallClock(), warmup=50)
    seen: list[tuple[int, str]] = []
    warm = 0
    try:
        async with asyncio.timeout(20):
            async for ev in feed.stream():
                if isinstance(ev, Warmup):
                    warm += len(ev.candles)
                elif isinstance(ev, tuple):
                    now = s.clock.now_ms()
                    for c in ev:
                        assert c.close_ts <= now  # closed at the exchange
                        final = s.series[c.symbol.replace("/", "")]
                        assert any(f.ts == c.ts and f.close == c.close for f in final)
                        seen.append((c.ts, c.symbol))
                if len(seen) >= 6:
                    break
    finally:
        await ex.close()
    assert warm >= 80
    assert len(seen) == len(set(seen))  # exactly once
    assert [ts for ts, _ in seen] == sorted(ts for ts, _ in seen)  # in order
    assert s.requests.get("/api/v3/klines", 0) > 0


# ---- the whole service, as a user runs it -----------------------------------------------
def _cmd(port: int, db: str, max_candles: int, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "bot", "run", "--mode", "paper", "--exchange", "binance",
            "--symbols", "BTC/USDT,ETH/USDT", "--timeframe", "1m",
            "--exchange-url", f"http://127.0.0.1:{port}", "--feed", "rest",
            "--poll-interval", "0.1", "--max-candles", str(max_candles), "--db", db,
            "--data-dir", str(data_dir), "--instance", f"e2e{port}"]


async def _spawn(cmd: list[str]) -> asyncio.subprocess.Process:
    env = dict(os.environ, STACKBOT_LOG_FORMAT="json")
    return await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)


async def test_paper_run_sigterm_and_restart_without_duplicates(
        sim: tuple[SimBinance, int], pg_url: str, tmp_path: Path) -> None:
    s, port = sim
    account = f"e2e{port}:paper:binance"
    # 1) a bounded run: candles arrive, signals and orders land in the ledger
    proc = await _spawn(_cmd(port, pg_url, 16, tmp_path))
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-3000:]
    signals = await fetch(pg_url, "SELECT count(*) AS n FROM signals WHERE account=$1", account)
    assert signals[0]["n"] == 16
    orders1 = await fetch(pg_url, "SELECT client_order_id FROM orders WHERE account=$1", account)
    assert orders1, "the baseline should have traded on the trending simulator"
    # 2) a long run, stopped by SIGTERM mid-run: it must exit within 5 s
    proc = await _spawn(_cmd(port, pg_url, 10_000, tmp_path))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        n = await fetch(pg_url, "SELECT count(*) AS n FROM signals WHERE account=$1", account)
        if n[0]["n"] >= 24:
            break
        await asyncio.sleep(0.2)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 10)
    stopped_in = time.monotonic() - sent
    assert stopped_in < 5.0, f"took {stopped_in:.1f}s to stop"
    assert proc.returncode == 0
    [run] = await fetch(pg_url, "SELECT status FROM runs WHERE account=$1 ORDER BY started_at DESC "
                        "LIMIT 1", account)
    assert run["status"] == "stopped"
    # 3) restart: resumes after the last processed candle, duplicates nothing
    proc = await _spawn(_cmd(port, pg_url, 8, tmp_path))
    _, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-3000:]
    dup_signals = await fetch(pg_url, "SELECT symbol, ts, count(*) AS n FROM signals WHERE "
                              "account=$1 GROUP BY symbol, ts HAVING count(*) > 1", account)
    assert dup_signals == []
    # one decision, one order (protective stops are cancel/replaced, so they are checked apart)
    dup_orders = await fetch(pg_url, "SELECT symbol, signal_ts, side, count(*) AS n FROM orders "
                             "WHERE account=$1 AND order_type <> 'stop' GROUP BY 1, 2, 3 "
                             "HAVING count(*) > 1", account)
    assert dup_orders == []
    stops = await fetch(pg_url, "SELECT symbol, count(*) AS n FROM orders WHERE account=$1 AND "
                        "order_type = 'stop' AND status IN ('open', 'pending_submit', "
                        "'partially_filled') GROUP BY 1 HAVING count(*) > 1", account)
    assert stops == []
    runs = await fetch(pg_url, "SELECT count(*) AS n FROM runs WHERE account=$1", account)
    assert runs[0]["n"] == 3
    # the ledger still reconciles across the three runs: fills = positions
    fills = await fetch(pg_url, "SELECT symbol, sum(CASE WHEN side='buy' THEN quantity ELSE "
                        "-quantity END) AS q FROM fills WHERE account=$1 GROUP BY symbol", account)
    pos = await fetch(pg_url, "SELECT symbol, quantity AS q FROM positions WHERE account=$1",
                      account)
    assert {r["symbol"]: r["q"] for r in fills} == {r["symbol"]: r["q"] for r in pos}


async def test_websocket_feed_survives_drops_and_stalls(sim: tuple[SimBinance, int]) -> None:
    """ccxt.pro's binance client over the simulator's kline stream: closed candles only, each
    once and in order per symbol, through a dropped socket and a silent one. Each time the
    feed falls back to REST at once (no candle waits), then returns to the websocket when a
    probe finds it answering again."""
    s, port = sim
    cfg = ExchangeSettings(url=f"http://127.0.0.1:{port}", feed="ws", stall_timeout=1.5,
                           ws_silence_s=1.0, ws_retry_s=0.5, poll_interval=0.1)
    ex = make_exchange(cfg, with_ws=True)
    feed = LiveFeed(ex, ["BTC/USDT", "ETH/USDT"], "1m", cfg, WallClock(), warmup=20)
    seen: dict[str, list[int]] = {"BTC/USDT": [], "ETH/USDT": []}
    states: list[FeedState] = []
    live = 0
    try:
        async with asyncio.timeout(40):
            async for ev in feed.stream():
                if isinstance(ev, FeedStatus):
                    states.append(ev.state)
                    if states.count(FeedState.WS_RESTORED) == 1 and ev.state is \
                            FeedState.WS_RESTORED:
                        s.ws_silent = True  # the socket stays open but says nothing

                        async def speak_again() -> None:
                            await asyncio.sleep(2.5)
                            s.ws_silent = False

                        asyncio.get_running_loop().create_task(speak_again())
                    continue
                candles = (ev.candles if isinstance(ev, Warmup)
                           else ev if isinstance(ev, tuple) else ())
                for c in candles:
                    final = [f for f in s.series[c.symbol.replace("/", "")] if f.ts == c.ts][0]
                    assert (c.open, c.high, c.low, c.close) == (
                        final.open,
                        final.high,
                        final.low,
                        final.close,
                    )
                    seen[c.symbol].append(c.ts)
                if isinstance(ev, tuple):
                    live += 1
                    if live == 3:
                        assert await s.drop_websockets() >= 1
                    if live >= 10 and states.count(FeedState.WS_RESTORED) >= 2:
                        break
    finally:
        await ex.close()
    # the drop and the silence: two fallbacks to REST, two returns to the websocket
    assert states[:4] == [
        FeedState.FALLBACK,
        FeedState.WS_RESTORED,
        FeedState.FALLBACK,
        FeedState.WS_RESTORED,
    ], states
    assert feed.fallbacks == 2 and feed.source == "ws"
    for ts in seen.values():
        assert ts == sorted(ts) and len(ts) == len(set(ts))


def test_a_candle_closes_on_the_venues_clock_not_ours() -> None:
    """The newest row of a response is emitted once the venue's time has passed its end: with
    the venue 30 s ahead of us a candle that ends 20 s from now (our clock) is closed; with
    the venue 30 s behind, one that ended 10 s ago (our clock) is not yet."""
    from types import SimpleNamespace

    class Fixed:
        def __init__(self, now: int) -> None:
            self.now = now

        def now_ms(self) -> int:
            return self.now

        def observe(self, ts_ms: int) -> None:
            return None

    def feed_with(now: int, venue_ahead_ms: int) -> LiveFeed:
        ex = SimpleNamespace(options={"timeDifference": -venue_ahead_ms}, has={}, id="x")
        return LiveFeed(ex, ["BTC/USDT"], "1m", ExchangeSettings(), Fixed(now))  # type: ignore[arg-type]

    now = 100 * M + 40_000  # the candle opened at 100 M ends 20 s from now
    ahead = feed_with(now, 30_000)
    assert ahead.exchange_now() == now + 30_000
    rows = [row(99 * M), row(100 * M)]
    assert [c.ts for c in CloseTracker("BTC/USDT", "1m").closed(rows, ahead.exchange_now())] == [
        99 * M,
        100 * M,
    ]
    assert [c.ts for c in CloseTracker("BTC/USDT", "1m").closed(rows, now)] == [99 * M]
    now = 100 * M + 10_000  # the candle opened at 99 M ended 10 s ago
    behind = feed_with(now, -30_000)
    late = [row(98 * M), row(99 * M)]
    assert [c.ts for c in CloseTracker("BTC/USDT", "1m").closed(late, behind.exchange_now())] == [
        98 * M
    ]
    assert [c.ts for c in CloseTracker("BTC/USDT", "1m").closed(late, now)] == [98 * M, 99 * M]
