"""The documented baseline: an EMA crossover with an ATR estimate.

Signal: fast and slow exponential moving averages of the close (defaults 12/26, as the classic
MACD pair). ``P(up)`` is a squashed function of the spread between them, measured in ATRs, so
it is above 0.5 exactly when the fast EMA is above the slow one. It is a rule, not a calibrated
probability; the model ensemble replaces it.

Strategy: long when ``P(up) > 0.5`` and flat with nothing working; exit the whole position
when ``P(up) < 0.5``. With ``shorts`` (perpetuals) the mirror image too: short when
``P(up) < 0.5`` and flat, cover when ``P(up) > 0.5``. A reversal is an exit, then an entry on a
later candle. Sizing is the risk gate's business.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bot.domain import Candle, Gap, OrderIntent, PromotedModel, Side, Signal
from bot.ports import PortfolioView

SOURCE = "ema_cross"


@dataclass(slots=True)
class _EmaState:
    fast: float
    slow: float
    atr: float
    prev_close: float
    count: int


class EmaCrossSignal:
    """Causal EMA crossover signal; state per symbol; emits after ``slow`` candles of warm-up."""

    name = SOURCE
    device = "cpu"

    def __init__(self, fast: int = 12, slow: int = 26, atr_period: int = 14) -> None:
        if fast >= slow:
            raise ValueError(f"fast EMA ({fast}) must be shorter than slow EMA ({slow})")
        self.fast, self.slow = fast, slow
        self._af = 2.0 / (fast + 1)
        self._as = 2.0 / (slow + 1)
        self._aa = 1.0 / atr_period
        self.model_version = f"{SOURCE}-{fast}-{slow}"
        self._state: dict[str, _EmaState] = {}

    def on_gap(self, gap: Gap) -> None:
        """An EMA carries across a hole, but the ATR must not treat the jump as one bar."""
        st = self._state.get(gap.symbol)
        if st is not None:
            st.prev_close = math.nan

    def update(self, c: Candle) -> Signal | None:
        st = self._state.get(c.symbol)
        if st is None:
            self._state[c.symbol] = _EmaState(c.close, c.close, c.high - c.low, c.close, 1)
            return None
        tr = c.high - c.low
        if st.prev_close == st.prev_close:  # not NaN
            tr = max(tr, abs(c.high - st.prev_close), abs(c.low - st.prev_close))
        st.fast += self._af * (c.close - st.fast)
        st.slow += self._as * (c.close - st.slow)
        st.atr += self._aa * (tr - st.atr)
        st.prev_close = c.close
        st.count += 1
        if st.count < self.slow:
            return None
        spread = (st.fast - st.slow) / st.atr if st.atr > 0 else 0.0
        p_up = 0.5 + 0.5 * math.tanh(spread)
        return Signal(
            symbol=c.symbol, ts=c.ts, p_up=p_up, expected_return=(st.fast - st.slow) / st.slow,
            source=SOURCE, model_version=self.model_version, price=c.close, atr=st.atr,
        )

    def warm(self, candles: Sequence[Candle]) -> None:
        """History before trading starts: update the averages, emit nothing."""
        for c in candles:
            self.update(c)

    def swap(self, model: PromotedModel) -> bool:
        return False  # no trained model to replace

    async def on_candles(self, candles: Sequence[Candle]) -> list[Signal]:
        out = []
        for c in candles:
            s = self.update(c)
            if s is not None:
                out.append(s)
        return out


class TrendFollowStrategy:
    """Long when the signal leans up, flat (or short, with ``shorts``) when it leans down."""

    def __init__(self, shorts: bool = False) -> None:
        self.shorts = shorts

    def decide(self, signal: Signal, portfolio: PortfolioView) -> OrderIntent | None:
        for o in portfolio.working_orders(signal.symbol):
            if not o.is_protective:
                return None  # one thing at a time per symbol (resting stops do not count)
        held = portfolio.position(signal.symbol).quantity
        if signal.p_up > 0.5 and held == 0:
            return OrderIntent(
                symbol=signal.symbol, side=Side.BUY, reason=f"{SOURCE}: fast EMA above slow",
                # an EMA spread is no calibrated probability: risk sizes it fixed-fractional
                signal_ts=signal.ts, model_version=signal.model_version, confidence=None,
                dispersion=signal.dispersion,
            )
        if signal.p_up < 0.5 and held > 0:
            return OrderIntent(
                symbol=signal.symbol, side=Side.SELL, reason=f"{SOURCE}: fast EMA below slow",
                signal_ts=signal.ts, model_version=signal.model_version, reduce_only=True,
                quantity=held,
            )
        if not self.shorts:
            return None
        if signal.p_up < 0.5 and held == 0:
            return OrderIntent(
                symbol=signal.symbol, side=Side.SELL, reason=f"{SOURCE}: fast EMA below slow",
                signal_ts=signal.ts, model_version=signal.model_version, confidence=None,
                dispersion=signal.dispersion,
            )
        if signal.p_up > 0.5 and held < 0:
            return OrderIntent(
                symbol=signal.symbol, side=Side.BUY, reason=f"{SOURCE}: fast EMA above slow",
                signal_ts=signal.ts, model_version=signal.model_version, reduce_only=True,
                quantity=-held,
            )
        return None
