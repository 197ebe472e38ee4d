"""The sizing comparison's buy & hold row is computed from prices (the engine's exposure caps
would not let it hold): equal weights, fees and slippage both ways, marked every candle."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_settings
from bot.domain import Candle
from bot.feeds.files import CandleSeries
from models.evaluate_run import buy_and_hold, round_trip_cost

H = 3_600_000


def _series(symbol: str, closes: list[float]) -> CandleSeries:
    candles = [Candle(symbol, "1h", i * H, closes[i - 1] if i else closes[0],
                      max(closes[i], closes[i - 1] if i else closes[0]),
                      min(closes[i], closes[i - 1] if i else closes[0]), closes[i], 1.0)
               for i in range(len(closes))]
    return CandleSeries(Path("synthetic"), symbol, "1h", candles, [], False)


def test_buy_and_hold_from_prices() -> None:
    settings = load_settings(overrides={"timeframe": "1h", "paper": {"fee_rate": "0.001",
                                                                    "slippage_bps": "2"}},
                             environ={})
    half = round_trip_cost(settings) / 2
    assert half == pytest.approx(0.0012)
    a = _series("A/USDT", [100, 120, 60, 200])  # x2 from the first open
    b = _series("B/USDT", [50, 50, 50, 50])  # flat
    out = buy_and_hold([a, b], 0, 4 * H, settings)
    final = 10_000 / 2 * (1 - half) * (2 + 1) * (1 - half)
    assert out["return_pct"] == pytest.approx(100 * (final / 10_000 - 1), abs=1e-3)
    # the worst point: A at 60 from a peak at 120 (A 0.6x, B 1x vs A 1.2x, B 1x)
    assert out["max_drawdown_pct"] == pytest.approx(100 * (1 - 1.6 / 2.2), abs=1e-3)
    assert out["trades"] == 4 and out["turnover"] == pytest.approx(
        (10_000 * (1 - half) + final / (1 - half)) / 10_000, abs=1e-3)
    assert out["fees_pct"] > 0.2  # one fee in, one out, on twice the money at the end
    # a window that excludes the run-up: from the third candle on
    later = buy_and_hold([a, b], 2 * H, 4 * H, settings)
    # A bought at the third candle's open (120) and sold at 200; B flat
    assert later["return_pct"] == pytest.approx(
        100 * ((1 - half) ** 2 * (200 / 120 + 1) / 2 - 1), abs=1e-3)
