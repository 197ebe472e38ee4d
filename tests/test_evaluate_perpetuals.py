"""``stackbot evaluate`` on perpetual futures (issue 14, item 8): predictors and sizing rules
trade long and short through the engine with funding at the mark, and buy & hold pays its
funding too. The funding rule (size x mark x rate, a positive rate: longs pay) is Binance's,
cited in tests/test_perpetuals.py; the figures here are computed by hand from it."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.domain import CandleSeries, FundingRate, MarkBar
from bot.evaluation import buy_and_hold, round_trip_cost, run_evaluation
from tests.helpers import ar1_series

H = 3_600_000
SYM = "SYN/USDT:USDT"


def test_buy_and_hold_of_a_perpetual_pays_funding_at_the_mark() -> None:
    settings = load_settings(overrides={"timeframe": "1h", "paper": {"fee_rate": "0.0005",
                                                                    "slippage_bps": "0"}},
                             environ={})
    base = ar1_series(10, symbol=SYM)
    t0 = base.candles[0].ts
    # marks 1 % above each close; funding at the 3rd and 6th candles' opens, and one at the
    # first open (bought then: not yet held at that moment, so not booked)
    candles = [replace(c, mark=MarkBar(c.open, c.high, c.low, c.close * 1.01))
               for c in base.candles]
    rates = (FundingRate(SYM, t0, 0.01), FundingRate(SYM, t0 + 2 * H, 0.001),
             FundingRate(SYM, t0 + 5 * H, -0.0004))
    s = CandleSeries(Path("synthetic"), SYM, "1h", candles, [], False, rates)
    out = buy_and_hold([s], [(t0, t0 + 10 * H)], settings)
    half = round_trip_cost(settings) / 2
    qty = 10_000 * (1 - half) / candles[0].open
    paid = qty * candles[1].close * 1.01 * 0.001  # at the mark that closed at the funding time
    received = qty * candles[4].close * 1.01 * 0.0004
    assert out["funding_paid"] == pytest.approx(paid, abs=1e-8)  # to 8 decimals
    assert out["funding_received"] == pytest.approx(received, abs=1e-8)
    final = (qty * candles[-1].close - paid + received) * (1 - half)
    assert out["final_equity"] == pytest.approx(final, rel=1e-9)
    # the same prices without funding end higher by exactly what was paid net
    dry = buy_and_hold([replace(s, funding=())], [(t0, t0 + 10 * H)], settings)
    assert dry["final_equity"] - out["final_equity"] == pytest.approx(
        (paid - received) * (1 - half), rel=1e-9)


def _write_perpetual(d: Path) -> Path:
    s = ar1_series(3000, phi=0.5, seed=5, symbol=SYM)
    path = d / "SYN_USDT_USDT-1h-futures.csv"
    path.write_text("timestamp,open,high,low,close,volume\n" + "".join(
        f"{c.ts},{float(c.open)!r},{float(c.high)!r},{float(c.low)!r},{float(c.close)!r},1e6\n"
        for c in s.candles))
    t0, end = s.candles[0].ts, s.candles[-1].ts
    first = t0 - t0 % (8 * H) + 8 * H
    (d / "SYN_USDT_USDT-1h-funding_rate.csv").write_text(
        "timestamp,open,high,low,close,volume\n"
        + "".join(f"{t},0.0001,0,0,0,0\n" for t in range(first, end, 8 * H)))
    return path


async def test_evaluate_trades_perpetuals_long_and_short_with_funding(
        tmp_path: Path, pg_url: str) -> None:
    path = _write_perpetual(tmp_path)
    settings = load_settings(overrides={"database": {"url": pg_url}, "timeframe": "1h",
                                        "futures": {"leverage": 5}}, environ={})
    report, result = await run_evaluation(settings, [path], None, tmp_path / "report", "tiny",
                                          "lstm,tcn", 1, lambda _: None)
    text = report.read_text()
    # the engine's cost on a perpetual: Binance USD-M's taker fee 0.05 % plus the slippage
    slip = float(settings.paper.slippage_bps) / 10_000
    assert f"round-trip cost {2 * (0.0005 + slip):.4f}" in text
    part = text[text.index("## Perpetuals: sides, funding"):text.index("## Calibration")]
    assert "traded long and short" in part
    rows = {m[0]: m[1:] for m in re.findall(
        r"^\| ([^|]+?) \| (\S+) \| (\S+) \| ([\d.]+) \| ([\d.]+) \| (\S+) \| (\S+) \|$",
        part, re.M)}
    traded = {k: v for k, v in rows.items() if v[0] != "n/a"}
    assert {"ensemble", "logistic_regression", "kelly_0.25", "fixed_1pct_risk"} <= set(traded)
    longs = sum(int(v[0]) for v in traded.values())
    shorts = sum(int(v[1]) for v in traded.values())
    assert longs > 0 and shorts > 0, rows  # both sides traded, not a vacuous table
    assert all(v[4] == "0" for v in traded.values())  # the guard held: no liquidation
    # a positive rate: every strategy that held longs paid some funding, and shorts received
    assert any(float(v[2]) > 0 for v in traded.values())
    assert any(float(v[3]) > 0 for k, v in traded.items() if int(v[1]) > 0)
    hold = result["sizing"]["buy_and_hold"]
    assert hold["funding_paid"] > 0 and hold["funding_received"] == 0
    assert rows["buy_and_hold (1x long)"][2] == f"{hold['funding_paid']:.2f}"
