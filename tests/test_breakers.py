"""Each circuit breaker fires on the situation it guards against, and not otherwise."""

from __future__ import annotations

from decimal import Decimal as D

from bot.domain import (
    Candle,
    CandleObs,
    ClockObs,
    EquityObs,
    ExchangeCallObs,
    PredictionObs,
    TradeClosedObs,
    TradingState,
)
from risk.breakers import (
    DAY_MS,
    ConsecutiveLossBreaker,
    DailyLossBreaker,
    DrawdownBreaker,
    ExchangeErrorBreaker,
    ModelDegradationBreaker,
    StaleDataBreaker,
    VolatilityBreaker,
    next_utc_midnight,
)
from risk.manager import RiskManager
from risk.settings import RiskSettings
from risk.sizing import SizingInputs, SizingParams, size_entry
from risk.stops import StopLevels

H = 3_600_000


def test_drawdown_within_window_halts_but_old_peaks_expire() -> None:
    b = DrawdownBreaker(0.10, 7 * DAY_MS)
    assert b.observe(EquityObs(0, 100.0)) == []
    assert b.observe(EquityObs(DAY_MS, 95.0)) == []
    [trip] = b.observe(EquityObs(2 * DAY_MS, 89.0))
    assert trip.target is TradingState.HALTED and "11.00%" in trip.reason
    slow = DrawdownBreaker(0.10, 7 * DAY_MS)
    slow.observe(EquityObs(0, 100.0))
    assert slow.observe(EquityObs(8 * DAY_MS, 91.0)) == []  # the 100 peak left the window
    assert slow.observe(EquityObs(9 * DAY_MS, 85.0)) == []  # 85 vs the in-window peak 91: 6.6%


def test_daily_loss_reduces_until_next_utc_midnight() -> None:
    b = DailyLossBreaker(0.03)
    t0 = 10 * DAY_MS + 3 * H
    assert b.observe(EquityObs(t0, 1000.0)) == []
    [trip] = b.observe(EquityObs(t0 + H, 960.0))
    assert (
        trip.target is TradingState.REDUCING and trip.until == next_utc_midnight(t0) == 11 * DAY_MS
    )
    assert b.observe(EquityObs(11 * DAY_MS + H, 960.0)) == []  # a new day, a new baseline


def test_consecutive_losses_cool_down() -> None:
    b = ConsecutiveLossBreaker(3, 12 * H)
    assert b.observe(TradeClosedObs(1, "X", -1)) == []
    assert b.observe(TradeClosedObs(2, "X", -1)) == []
    assert b.observe(TradeClosedObs(3, "X", 5)) == []  # a win resets the streak
    b.observe(TradeClosedObs(4, "X", -1))
    b.observe(TradeClosedObs(5, "X", -1))
    [trip] = b.observe(TradeClosedObs(6, "X", -1))
    assert trip.cooldown_until == 6 + 12 * H and trip.target is None


def test_stale_data_blocks_entries_until_fresh() -> None:
    b = StaleDataBreaker(H, 2)
    b.observe(CandleObs(H, "BTC/USDT", 1.0))
    assert b.observe(ClockObs(3 * H)) == []
    [trip] = b.observe(ClockObs(3 * H + 1))
    assert trip.block == ("stale:BTC/USDT", True)
    [back] = b.observe(CandleObs(4 * H, "BTC/USDT", 1.0))
    assert back.block == ("stale:BTC/USDT", False)


def test_exchange_error_rate_halts() -> None:
    b = ExchangeErrorBreaker(0.5, window=10, min_calls=10)
    trips = [t for i in range(10) for t in b.observe(ExchangeCallObs(i, i % 3 == 0))]
    assert trips and trips[-1].target is TradingState.HALTED
    ok = ExchangeErrorBreaker(0.5, window=10, min_calls=10)
    assert [t for i in range(30) for t in ok.observe(ExchangeCallObs(i, i % 3 != 0))] == []


def test_volatility_spike_reduces() -> None:
    b = VolatilityBreaker(3.0, window=20, hold_ms=5 * H)
    for i in range(20):
        assert b.observe(CandleObs(i * H, "X", 10.0 + (i % 3))) == []
    [trip] = b.observe(CandleObs(21 * H, "X", 40.0))
    assert trip.target is TradingState.REDUCING and trip.until == 26 * H


def test_model_degradation_reduces_and_requests_retrain() -> None:
    assert ModelDegradationBreaker(None).observe(PredictionObs(0, False)) == []
    b = ModelDegradationBreaker(0.56, drop=0.05, window=100)
    trips = [t for i in range(100) for t in b.observe(PredictionObs(i, i % 2 == 0))]  # 50%
    assert len(trips) == 1 and trips[0].retrain and trips[0].target is TradingState.REDUCING
    good = ModelDegradationBreaker(0.56, drop=0.05, window=100)
    assert [t for i in range(100) for t in good.observe(PredictionObs(i, i % 5 != 0))] == []


def test_sizing_disagreement_shrinks_and_costs_gate() -> None:
    k = SizingParams(
        kelly_fraction=0.5,
        k_stop=2,
        k_target=3,
        max_risk_per_trade=1.0,
        round_trip_cost=0.002,
        disagreement_limit=0.2,
    )
    base = size_entry(SizingInputs(10_000, 100, 2, 0.6, 0.0), k)
    half = size_entry(SizingInputs(10_000, 100, 2, 0.6, 0.1), k)
    none = size_entry(SizingInputs(10_000, 100, 2, 0.6, 0.2), k)
    assert base.quantity > 0 and abs(half.quantity - base.quantity / 2) < 1e-9
    assert none.quantity == 0 and "disagree" in none.reason
    # a stop 0.02 % away: 0.2 % of costs are 10 R, far above any edge at p = 0.6
    tiny_atr = size_entry(SizingInputs(10_000, 100, 0.01, 0.6, 0.0), k)
    assert tiny_atr.quantity == 0 and "break-even" in tiny_atr.reason


def test_chandelier_only_moves_up_and_stop_wins_ties() -> None:
    lv = StopLevels.on_entry(100, 2, 2, 3)
    assert (lv.stop, lv.target) == (96, 106)
    up = lv.trail(high=110, atr=2, k_chandelier=3)
    assert up.stop == 104
    assert up.trail(high=105, atr=4, k_chandelier=3).stop == 104  # never lowered
    assert StopLevels.on_entry(100, 2, 2, 3).hit(low=95, high=107) == "stop"


def test_manager_summarises_what_fired() -> None:
    m = RiskManager(RiskSettings(drawdown_limit=0.05), H)
    m.on_candle(Candle("X/USDT", "1h", 0, 1, 1, 1, 1, 1), 0.1)
    m.on_equity(H, D(1000))
    [t] = m.on_equity(2 * H, D(900))
    assert t.after is TradingState.HALTED
    assert m.report.trips["drawdown"] == 1
    assert m.report.transitions[-1]["to"] == "HALTED"
