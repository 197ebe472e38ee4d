"""Issue 9 end to end: what a venue that is not ours does to a run.

- a read failure never ends a run: Binance's own -1000 body on every candle poll makes the feed
  report itself stale (entries blocked) and keep trying, then fresh again;
- configuration and permission errors do end it: exit status 2, the reason audited, and one
  line saying what to fix, for each fatal class, with the bodies Binance sends
  (https://developers.binance.com/docs/binance-spot-api-docs/errors; -2010 "Rest API trading
  is not enabled." as reported in github.com/sonvister/Binance/issues/66; -3022 from ccxt's
  binance map);
- a venue whose websocket is off (404 on the stream URL): the default ``feed auto`` falls back
  to REST at once, logs it once as a warning, and the run completes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.clock import WallClock
from bot.config import ExchangeSettings
from bot.domain import FeedState, FeedStatus
from bot.exchange.client import make_exchange
from bot.exchange.retry import RetryPolicy
from bot.feeds.live import LiveFeed
from bot.sim.binance import SimBinance, build, start_server
from bot.sim.faults import FaultPlan
from tests.conftest import fetch
from tests.fault_helpers import KEY, LIVE_ENV, SECRET, SYMBOLS, live_cmd, live_config
from tests.live_helpers import spawn_logged


@pytest.fixture
async def venue() -> AsyncIterator[tuple[SimBinance, int]]:
    sim = build(list(SYMBOLS), "1m", speed=120.0, history=300, seed=13, future=20_000)
    sim.open_account(KEY, SECRET, {"USDT": "10000"})
    runner, port = await start_server(sim)
    yield sim, port
    await runner.cleanup()


async def test_failing_reads_make_the_feed_stale_never_end_it(
        venue: tuple[SimBinance, int]) -> None:
    """HTTP 500 with Binance's -1000 body on every kline poll (ccxt: OperationFailed, which is
    not a NetworkError): retried, then reported stale after 2 failures in a row, and fresh
    once the venue answers again; the stream never raises."""
    sim, port = venue
    cfg = ExchangeSettings(url=f"http://127.0.0.1:{port}", feed="rest", poll_interval=0.1,
                           stale_after_failures=2)
    ex = make_exchange(cfg, with_ws=False)
    feed = LiveFeed(ex, ["BTC/USDT"], "1m", cfg, WallClock(), warmup=20)
    feed.read_policy = RetryPolicy(attempts=2, base_s=0.01, cap_s=0.02)
    sim.faults = FaultPlan.from_specs(["unknown_error=1.0@/api/v3/klines"])
    sim.faults.enabled = False
    states: list[FeedState] = []
    live_after_fresh = 0
    try:
        async with asyncio.timeout(60):
            async for ev in feed.stream():
                if isinstance(ev, FeedStatus):
                    states.append(ev.state)
                    if ev.state is FeedState.STALE:
                        assert "OperationFailed" in ev.reason and "-1000" in ev.reason
                        sim.faults.enabled = False  # the venue recovers
                elif isinstance(ev, tuple):
                    if not states:
                        sim.faults.enabled = True  # first live candle: the venue breaks
                    elif states[-1] is FeedState.FRESH:
                        live_after_fresh += 1
                        if live_after_fresh >= 3:
                            break
    finally:
        await ex.close()
    assert states == [FeedState.STALE, FeedState.FRESH]
    assert sim.faults.counts["unknown_error"] >= 4  # 2 failures x 2 tries each


FATAL = {
    # class: (how the venue refuses, extra CLI change)
    "AuthenticationError": ({}, {"STACKBOT_EXCHANGE_API_KEY": "not-the-key-0123456789"}),
    "AccountSuspended": ({"*": (400, -3022, "You account's trading is banned.")}, {}),
    "PermissionDenied": ({"POST /api/v3/order": (400, -2010, "Rest API trading is not "
                                                "enabled.")}, {}),
    "BadSymbol": ({}, {}),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("ccxt_class", list(FATAL))
async def test_a_fatal_class_ends_the_run_audited_with_what_to_fix(
        venue: tuple[SimBinance, int], fresh_db: str, tmp_path: Path, reaper: list[Any],
        ccxt_class: str) -> None:
    sim, port = venue
    assert sim.account is not None
    refuse, env = FATAL[ccxt_class]
    sim.account.refuse.update(refuse)
    cmd = live_cmd(port, fresh_db, tmp_path, "fatal", live_config(tmp_path))
    if ccxt_class == "BadSymbol":
        cmd[cmd.index("--symbols") + 1] = "BTC/USDT,NOPE/USDT"
    log = tmp_path / "bot.log"
    proc = await spawn_logged(cmd, log, **{**LIVE_ENV, **env})
    reaper.append(proc)
    rc = await asyncio.wait_for(proc.wait(), 150)
    text = log.read_text()
    assert rc == 2, text[-3000:]
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "-- to fix: " in errors[0], text[-2000:]
    [row] = await fetch(fresh_db, "SELECT payload FROM audit_events WHERE kind = 'run.fatal'")
    payload = json.loads(row["payload"]) if isinstance(row["payload"], str) else row["payload"]
    assert payload["fix"] in errors[0]
    if ccxt_class == "BadSymbol":  # ccxt never got to ask: our market check found it first
        assert payload["kind"] == "UnknownSymbol" and "NOPE/USDT" in payload["error"]
    else:
        assert payload["ccxt_class"] == ccxt_class
    runs = await fetch(fresh_db, "SELECT status FROM runs")
    assert [r["status"] for r in runs] == ["failed"]
    assert KEY not in text and SECRET not in text


async def test_venue_without_websocket_falls_back_to_rest(
        fresh_db: str, tmp_path: Path, reaper: list[Any]) -> None:
    """The acceptance run of issue 9, on a simulator at 30x (a 1m candle every 2 s): the
    default feed (auto: websocket first) meets a 404 on the stream URL, warns once, polls
    REST, and the run ends cleanly after 20 candles; the first candle comes within one
    timeframe plus the fallback deadline of the feed's start."""
    speed = 30.0
    sim = build(["BTC/USDT"], "1m", speed=speed, history=300, seed=17, future=5_000)
    sim.ws_enabled = False
    runner, port = await start_server(sim)
    try:
        log = tmp_path / "bot.log"
        cmd = [sys.executable, "-m", "bot", "run", "--mode", "paper", "--exchange", "binance",
               "--symbols", "BTC/USDT", "--timeframe", "1m",
               "--exchange-url", f"http://127.0.0.1:{port}", "--poll-interval", "0.5",
               "--max-candles", "20", "--db", fresh_db, "--data-dir", str(tmp_path),
               "--instance", "nows"]
        proc = await spawn_logged(cmd, log)
        reaper.append(proc)
        rc = await asyncio.wait_for(proc.wait(), 150)
    finally:
        await runner.cleanup()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    fallbacks = [e for e in events if e.get("event") == "feed_fallback"]
    assert len(fallbacks) == 1 and fallbacks[0]["level"] == "warning"
    start = next(e for e in events if e.get("event") == "feed_start")
    first = next(e for e in events if e.get("event") == "first_candle")
    assert start["source"] == "ws"  # auto chose the websocket first
    latency = _at(first) - _at(start)
    deadline = min(30.0, max(5.0, 60 / 4))  # ws_silence_s default for 1m
    assert latency <= 60 / speed + deadline, latency
    print(f"\nfallback: first candle {latency:.2f} s after the feed started "
          f"(bound {60 / speed + deadline:.0f} s)")
    audited = await fetch(fresh_db, "SELECT kind FROM audit_events WHERE kind LIKE 'feed.%'")
    assert [r["kind"] for r in audited] == ["feed.fallback"]
    [run] = await fetch(fresh_db, "SELECT status FROM runs")
    assert run["status"] == "completed"


def _at(event: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["timestamp"]).timestamp()
