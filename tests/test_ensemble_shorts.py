"""The ensemble's short side on perpetuals (issue 14, item 2): a short bets on P(lower barrier
first) = 1 - p, from the same triple-barrier labels, so its stop is the upper barrier
(``k_target`` ATRs above) and its target the lower one (``k_stop`` ATRs below).

Every expected figure is computed here by hand from Kelly's formula, the break-even
``(1 + c) / (1 + b)`` and Binance's isolated liquidation formula (cited in
tests/test_perpetuals.py), not read back from the code under test.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal as D
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.app import backtest
from bot.brokers.paper import SWAP_TAKER_FEE
from bot.config import load_settings
from bot.domain import (
    Candle,
    Fill,
    InstrumentKind,
    MarketSpec,
    OrderIntent,
    Position,
    Regime,
    Side,
    Signal,
)
from bot.portfolio import Portfolio
from models.evaluate import PrecomputedSource
from risk.manager import RiskManager
from risk.margin import MarginTerms
from risk.settings import RiskSettings
from risk.sizing import SizingInputs, SizingParams, break_even, size_entry
from strategies.ensemble import EnsembleStrategy
from tests.conftest import fetch

H = 3_600_000
SYM = "BTC/USDT:USDT"
SWAP = MarketSpec(SYM, "BTC", "USDT", amount_step=D("0.001"), price_tick=D("0.1"),
                  min_notional=D("5"), kind=InstrumentKind.SWAP, settle="USDT")


class _Book:
    def __init__(self, qty: str = "0", updated: int = 0) -> None:
        self.pos = Position("a", SYM, D(qty), D("100"), D(0), updated)

    def working_orders(self, symbol: str | None = None) -> list[object]:
        return []

    def position(self, symbol: str) -> Position:
        return self.pos


def _signal(p: float, ts: int = 10 * H, atr: float = 1.0,
            regime: Regime = Regime.UNKNOWN) -> Signal:
    return Signal(SYM, ts, p, 0.0, "ensemble", "v", price=100.0, atr=atr, regime=regime)


def _strategy(shorts: bool = True) -> EnsembleStrategy:
    return EnsembleStrategy(2.0, 3.0, 24, H, cost=0.003, shorts=shorts)


# ---- the strategy ---------------------------------------------------------------------------
def test_a_short_enters_when_q_clears_its_own_break_even() -> None:
    s = _strategy()
    # the short's stop is k_target = 3 ATRs: d = 3 %, costs 0.003 / 0.03 = 0.1 R; it aims at
    # k_stop = 2 ATRs: b = 2 / 3; break-even (1 + 0.1) / (1 + 2/3) = 0.66
    bar = 1.1 / (1 + 2 / 3)
    assert bar == pytest.approx(0.66)
    assert s.decide(_signal(1 - bar + 1e-6), _Book()) is None  # q just under the bar
    intent = s.decide(_signal(1 - bar - 1e-3), _Book())
    assert intent is not None and intent.side is Side.SELL and not intent.reduce_only
    assert intent.confidence == pytest.approx(bar + 1e-3)  # risk sizes on q, not on p
    assert "short entry" in intent.reason and "q = 1 - p" in intent.reason
    # the same p on spot: no short, and no long either (p is far below the long's bar)
    assert _strategy(shorts=False).decide(_signal(1 - bar - 1e-3), _Book()) is None
    # the long side is untouched: its bar is (1 + 0.003/0.02) / 2.5 = 0.46
    long_ = s.decide(_signal(0.47), _Book())
    assert long_ is not None and long_.side is Side.BUY and long_.confidence == 0.47
    # a p between both bars trades neither side
    assert s.decide(_signal(0.40), _Book()) is None


def test_a_held_short_exits_below_its_break_even_at_the_time_limit_and_in_a_bull_regime() -> None:
    s = _strategy()
    entry_fill = 100 * H
    held = _Book("-2", entry_fill)
    # the cost-free break-even of the short is 1 / (1 + 2/3) = 0.6 in q: p above 0.4 exits
    assert s.decide(_signal(0.39, ts=(99 + 5) * H), held) is None
    out = s.decide(_signal(0.41, ts=(99 + 5) * H), held)
    assert out is not None and out.side is Side.BUY and out.reduce_only
    assert out.quantity == D(2) and "below break-even 0.600" in out.reason
    timed = s.decide(_signal(0.2, ts=(99 + 24) * H), held)
    assert timed is not None and timed.side is Side.BUY and "time limit" in timed.reason
    bull = s.decide(_signal(0.2, ts=(99 + 5) * H, regime=Regime.BULL), held)
    assert bull is not None and bull.side is Side.BUY and "bull regime" in bull.reason
    # the bear regime closes longs, not shorts
    assert s.decide(_signal(0.2, ts=(99 + 5) * H, regime=Regime.BEAR), held) is None


def test_regimes_block_each_side_where_it_leans_against() -> None:
    s = _strategy()
    assert s.decide(_signal(0.2, regime=Regime.BULL), _Book()) is None
    bear = s.decide(_signal(0.2, regime=Regime.BEAR), _Book())
    assert bear is not None and bear.side is Side.SELL
    assert s.decide(_signal(0.6, regime=Regime.BEAR), _Book()) is None
    bull = s.decide(_signal(0.6, regime=Regime.BULL), _Book())
    assert bull is not None and bull.side is Side.BUY


@settings(max_examples=300, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.05, 5.0), st.floats(0.05, 5.0), st.floats(1e-4, 0.1),
       st.floats(0.0, 0.01))
def test_at_most_one_side_clears_its_bar_and_each_entry_clears_its_own(
        p: float, k_stop: float, k_target: float, atr_frac: float, cost: float) -> None:
    s = EnsembleStrategy(k_stop, k_target, 24, H, cost=cost, shorts=True)
    intent = s.decide(Signal(SYM, 0, p, 0.0, "e", "v", price=100.0, atr=100 * atr_frac), _Book())
    d_long, d_short = k_stop * atr_frac, k_target * atr_frac
    long_bar = break_even(k_target / k_stop, cost / d_long)
    short_bar = break_even(k_stop / k_target, cost / d_short)
    assert long_bar + short_bar >= 1 - 1e-12  # 1 exactly without costs, more with them
    if intent is None:
        assert p <= long_bar and 1 - p <= short_bar
    elif intent.side is Side.BUY:
        assert p > long_bar and intent.confidence == p
    else:
        assert 1 - p > short_bar and intent.confidence == pytest.approx(1 - p)


# ---- sizing, stops and the guard --------------------------------------------------------
def test_a_short_is_sized_on_its_own_stop_and_payoff() -> None:
    k = SizingParams(kelly_fraction=0.25, k_stop=2.0, k_target=3.0, max_risk_per_trade=0.2,
                     round_trip_cost=0.003)
    s = size_entry(SizingInputs(10_000, 100.0, 1.0, 0.8, 0.0, -1.0), k)
    # q = 0.8, b = 2/3: f* = 0.8 - 0.2 / (2/3) = 0.5; a quarter of it, 12.5 % at risk over a
    # 3 % stop: 10,000 * 0.125 / 0.03 / 100 = 416.67 contracts
    assert s.kelly == pytest.approx(0.5)
    assert s.risk == pytest.approx(0.125)
    assert s.quantity == pytest.approx(10_000 * 0.125 / 0.03 / 100)
    assert s.edge == pytest.approx(0.8 * 2 / 3 - 0.2 - 0.003 / 0.03)
    # the long at the same win probability risks a 2 % stop for b = 1.5: another size
    long_ = size_entry(SizingInputs(10_000, 100.0, 1.0, 0.8, 0.0, 1.0), k)
    assert long_.kelly == pytest.approx(0.8 - 0.2 / 1.5)
    # with symmetric barriers the two sides are mirror images
    sym = SizingParams(kelly_fraction=0.25, k_stop=2.5, k_target=2.5, max_risk_per_trade=0.2)
    a = size_entry(SizingInputs(10_000, 100.0, 1.0, 0.7, 0.0, 1.0), sym)
    b = size_entry(SizingInputs(10_000, 100.0, 1.0, 0.7, 0.0, -1.0), sym)
    assert a.quantity == pytest.approx(b.quantity) and a.kelly == pytest.approx(b.kelly)
    # a short q below its break-even (0.66 here) is no trade
    assert size_entry(SizingInputs(10_000, 100.0, 1.0, 0.65, 0.0, -1.0), k).quantity == 0


def _manager(leverage: int) -> tuple[RiskManager, Portfolio]:
    cfg = RiskSettings(k_stop=2, k_target=3, liquidation_buffer_atr=1.0)
    m = RiskManager(cfg, H, margin=MarginTerms(D(leverage)))
    candle = Candle(SYM, "1h", 0, 100, 100, 100, 100, 1)
    m.on_candle(candle, 1.0)
    pf = Portfolio("a", D(10_000), "USDT", margined=[SYM])
    pf.mark(candle)
    return m, pf


def test_a_shorts_protective_stop_is_the_upper_barrier() -> None:
    m, _ = _manager(5)
    before, after = Position("a", SYM), Position("a", SYM, D(-1), D(100))
    fill = Fill("f", "c", "a", SYM, Side.SELL, D(1), D(100), D(0), "USDT", 0)
    [placed] = m.on_fill(fill, before, after)
    assert placed.stop_price == D("103.0")  # k_target = 3 ATRs above, not k_stop = 2
    # the take-profit is the lower barrier, 2 ATRs below: a candle touching 98 exits
    [tp] = m.on_candle_protect(Candle(SYM, "1h", H, 100, 100.5, 97.9, 98.5, 1), after)
    assert tp.exit_reason is not None and "take-profit at 98" in tp.exit_reason


@pytest.mark.parametrize(("leverage", "approved"), [(28, False), (20, True)])
def test_the_liquidation_guard_measures_a_short_from_its_own_stop(leverage: int,
                                                                  approved: bool) -> None:
    """Isolated short, Binance's formula with WB = Q * EP / L, cum 0, MMR 0.4 %:
    LP = EP * (1 + 1/L) / (1 + MMR). At 28x that is 103.16, 0.16 ATR above the short's
    stop at 103 (refused; a stop at k_stop = 102 would have passed); at 20x 104.58, 1.58
    ATRs above it (approved)."""
    lp = 100 * (1 + 1 / leverage) / 1.004
    m, pf = _manager(leverage)
    intent = OrderIntent(SYM, Side.SELL, "t", 0, "v", confidence=0.8)
    d = m.review(intent, pf, SWAP, {SYM: SWAP})
    assert d.approved is approved, d.reason
    found = re.search(r"stop ([\d.]+), liquidation ([\d.]+) at (\d+)x isolated: ([\d.]+) ATR",
                      d.reason)
    assert found is not None, d.reason
    stop, liq, lev, apart = (float(x) for x in found.groups())
    assert (stop, lev) == (103.0, leverage)
    assert liq == pytest.approx(lp, abs=1e-4)
    assert apart == pytest.approx(lp - 103, abs=0.006)


# ---- through the engine: a backtest on hand-made perpetual candles -----------------------
def _falling(n: int, t0: int) -> list[list[float]]:
    rows, price = [], 100.0
    for i in range(n):
        o, c = price, price * 0.997
        rows.append([t0 + i * H, o, o * 1.002, c * 0.998, c, 1_000_000.0])
        price = c
    return rows


async def test_the_ensemble_shorts_a_perpetual_in_a_backtest_and_receives_funding(
        tmp_path: Path, pg_url: str) -> None:
    t0 = 1_600_000_000_000 // (8 * H) * (8 * H)
    rows = _falling(80, t0)
    path = tmp_path / "BTC_USDT_USDT-1h-futures.csv"
    path.write_text("timestamp,open,high,low,close,volume\n"
                    + "".join(",".join(repr(v) for v in r) + "\n" for r in rows))
    rates = [(t0 + k * 8 * H, 0.0003) for k in range(1, 10)]  # positive: shorts receive
    (tmp_path / "BTC_USDT_USDT-1h-funding_rate.csv").write_text(
        "timestamp,open,high,low,close,volume\n"
        + "".join(f"{ts},{rate!r},0,0,0,0\n" for ts, rate in rates))
    # the model says the lower barrier comes first: p = 0.2, q = 0.8 on every candle
    table = {(SYM, int(r[0])): (0.2, r[4] * 0.01) for r in rows[30:]}
    cfg = load_settings(overrides={"database": {"url": pg_url}, "timeframe": "1h",
                                   "futures": {"leverage": 5}, "paper": {"slippage_bps": "0"}},
                        environ={})
    cost = 2 * float(SWAP_TAKER_FEE)

    def stack(shorts: bool) -> tuple[PrecomputedSource, EnsembleStrategy]:
        return (PrecomputedSource("ensemble", table),
                EnsembleStrategy(2.0, 3.0, 24, H, cost=cost, shorts=shorts))

    out = await backtest(cfg, [path], None, None, None, stack=stack(True))
    s = out.summary
    assert s["short_entries"] >= 2 and s["long_entries"] == 0, s
    assert D(str(s["funding_received"])) > 0 and D(str(s["funding_paid"])) == 0
    assert s["liquidations"] == 0
    # every short entry was sized on q and its stop placed k_target = 3 ATRs above the fill
    approved = await fetch(pg_url, "SELECT payload FROM audit_events WHERE account=$1 AND "
                           "kind='risk.approved'", s["account"])
    entries = [p for p in (json.loads(r["payload"]) if isinstance(r["payload"], str)
                           else r["payload"] for r in approved) if p["side"] == "sell"
               and "short entry" in p["intent"]]
    assert entries and all(p["confidence"] == pytest.approx(0.8) for p in entries)
    fills = await fetch(pg_url, "SELECT price FROM fills WHERE account=$1 AND side='sell' "
                        "ORDER BY ts", s["account"])
    stops = await fetch(pg_url, "SELECT stop_price FROM orders WHERE account=$1 AND "
                        # the entry's stop first: a trail in the entry's candle shares its
                        # created_at and only ever lowers a short's stop
                        "stop_price IS NOT NULL ORDER BY created_at, stop_price DESC",
                        s["account"])
    first_fill, first_stop = float(fills[0]["price"]), float(stops[0]["stop_price"])
    assert first_stop > first_fill
    atr = (first_stop - first_fill) / 3
    assert 0.008 * first_fill < atr < 0.0105 * first_fill  # 3 ATRs of about 1 % each
    # the same signals on spot: a spot account never shorts, so it never trades
    spot = tmp_path / "spot"
    spot.mkdir()
    spot_path = spot / "BTC_USDT-1h.csv"
    spot_path.write_text(path.read_text())
    spot_table = {("BTC/USDT", ts): v for (_, ts), v in table.items()}
    out = await backtest(cfg, [spot_path], None, None, None,
                         stack=(PrecomputedSource("ensemble", spot_table),
                                EnsembleStrategy(2.0, 3.0, 24, H, cost=cost, shorts=False)))
    assert out.summary["trades"] == 0 and out.summary["signals"] > 0
