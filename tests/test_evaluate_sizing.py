"""The sizing comparison's buy & hold row is computed from prices (the engine's exposure caps
would not let it hold): equal weights, fees and slippage both ways, marked every candle."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_settings
from bot.domain import Candle, CandleSeries
from bot.evaluation import buy_and_hold, round_trip_cost

H = 3_600_000


def _series(symbol: str, closes: list[float]) -> CandleSeries:
    candles = [Candle(symbol, "1h", i * H, closes[i - 1] if i else closes[0],
                      max(closes[i], closes[i - 1] if i else closes[0]),
                      min(closes[i], closes[i - 1] if i else closes[0]), closes[i], 1.0)
               for i in range(len(closes))]
    return CandleSeries(Path("synthetic"), symbol, "1h", candles, [], False)


def _settings():  # type: ignore[no-untyped-def]
    return load_settings(overrides={"timeframe": "1h", "paper": {"fee_rate": "0.001",
                                                                "slippage_bps": "2"}},
                         environ={})


def test_buy_and_hold_from_prices() -> None:
    settings = _settings()
    half = round_trip_cost(settings) / 2
    assert half == pytest.approx(0.0012)
    a = _series("A/USDT", [100, 120, 60, 200])  # x2 from the first open
    b = _series("B/USDT", [50, 50, 50, 50])  # flat
    out = buy_and_hold([a, b], [(0, 4 * H)], settings)
    final = 10_000 / 2 * (1 - half) * (2 + 1) * (1 - half)
    assert out["final_equity"] == pytest.approx(final, rel=1e-9)
    assert out["return_pct"] == pytest.approx(100 * (final / 10_000 - 1), abs=1e-3)
    # the worst point: A at 60 from a peak at 120 (A 0.6x, B 1x vs A 1.2x, B 1x)
    assert out["max_drawdown_pct"] == pytest.approx(100 * (1 - 1.6 / 2.2), abs=1e-3)
    assert out["trades"] == 4  # one round trip per symbol
    assert out["turnover"] == pytest.approx((10_000 + final / (1 - half)) / 10_000, abs=1e-3)
    assert out["fees_pct"] == pytest.approx(100 * half * (10_000 + final / (1 - half)) / 10_000,
                                            abs=1e-4)  # rounded to 4 places


def test_buy_and_hold_one_round_trip_per_window_at_the_price_ratio_net_of_fees() -> None:
    """Per test window: bought at its first open, sold at its last close, nothing between;
    the proceeds roll into the next window. The result is the product of the windows' price
    ratios net of one fee and slippage each way, to 1e-6."""
    settings = _settings()
    half = round_trip_cost(settings) / 2
    closes = [100, 104, 97, 110, 90, 95, 130, 125, 80, 88]
    s = _series("A/USDT", closes)
    windows = [(1 * H, 4 * H), (4 * H, 7 * H), (8 * H, 10 * H)]  # a candle skipped before the third
    out = buy_and_hold([s], windows, settings)
    c = s.candles
    expect = 10_000.0
    for start, end in windows:
        inside = [x for x in c if start <= x.ts < end]
        expect *= (1 - half) * inside[-1].close / inside[0].open * (1 - half)
    assert out["trades"] == 2 * len(windows)
    assert out["final_equity"] == pytest.approx(expect, rel=1e-6)
    assert out["return_pct"] == pytest.approx(100 * (expect / 10_000 - 1), abs=1e-4)
    assert [t for t, _ in out["equity"]] == [x.ts for x in c if any(a <= x.ts < b
                                                                    for a, b in windows)]
