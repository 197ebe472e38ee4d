"""The simulator itself: fault specs, and replaying recorded candles through ccxt."""

from __future__ import annotations

import pytest

from bot.sim.faults import FaultPlan, FaultRule, FaultSpecError


def test_fault_specs_parse_rates_schedules_and_places() -> None:
    r = FaultRule.parse("lost=every:3@/api/v3/order:post")
    assert (r.kind, r.every, r.path, r.method) == ("lost", 3, "/api/v3/order", "POST")
    w = FaultRule.parse("server_error=window:5-10")
    assert w.window == (5.0, 10.0) and w.path == "*"
    plan = FaultPlan.from_specs(["reset=every:2@/api/v3/klines"])
    fired = [plan.http("GET", "/api/v3/klines") for _ in range(4)]
    assert fired == [None, "reset", None, "reset"]
    assert plan.http("GET", "/api/v3/time") is None  # another endpoint


@pytest.mark.parametrize("spec, words", [
    ("bogus=0.1", "unknown fault kind 'bogus'"),
    ("rate_limit", "expected KIND=RATE"),
    ("rate_limit=lots", "cannot read 'lots'"),
    ("rate_limit=2", "not within 0..1"),
    ("lost=every:0", "cannot read 'every:0'"),
])
def test_bad_fault_specs_say_what_is_wrong(spec: str, words: str) -> None:
    with pytest.raises(FaultSpecError, match=words):
        FaultRule.parse(spec)


async def test_recorded_candles_replay_through_ccxt() -> None:
    from bot.config import ExchangeSettings
    from bot.exchange.client import make_exchange
    from bot.feeds.files import load_candle_file
    from bot.sim.binance import replay, start_server
    from tests.conftest import shared_file

    series = load_candle_file(shared_file("binance-spot-1h", "ETH_USDT-1h.json"), "1h")
    sim = replay({series.symbol: series.candles}, speed=3600.0, history=50)
    runner, port = await start_server(sim)
    ex = make_exchange(ExchangeSettings(url=f"http://127.0.0.1:{port}"), with_ws=False)
    try:
        rows = await ex.fetch_ohlcv("ETH/USDT", "1h", series.candles[0].ts, 10)
    finally:
        await ex.close()
        await runner.cleanup()
    expected = series.candles[:10]
    assert [r[0] for r in rows] == [c.ts for c in expected]
    assert [r[4] for r in rows] == [c.close for c in expected]  # the real closes, unchanged
