"""The ensemble strategy (long-only spot).

The ensemble's p is the calibrated probability that the target (``k_target`` ATRs above) is
touched before the stop (``k_stop`` ATRs below) within ``horizon`` candles: the triple-barrier
bet the risk manager places. So the strategy judges it in the bet's own units, R (the amount
lost at the stop), as the sizing does:

- Enter only when the bet's expectation net of costs is positive:
  ``p * b - (1 - p) - c > 0`` with ``b = k_target / k_stop`` and the round-trip costs
  ``c = cost / d`` in R, where ``d = k_stop * ATR / price``. That is p above the break-even
  ``(1 + c) / (1 + b)`` (``risk.sizing.break_even``), the same test the risk manager applies,
  so no intent is sent only to be refused.
- Skip entries when the members disagree (dispersion above ``max_dispersion``). Between zero
  and that limit, the risk manager shrinks the size.
- Regime gating: no entries in the bear regime, and a held position is closed there. An
  unknown regime (no VAE member, or one that is not confident) blocks nothing.
- Exit when p falls below the cost-free break-even ``1 / (1 + b)`` (a fresh bet would now lose
  in expectation), or when the position reaches the time limit: ``horizon`` candles after its
  last fill, the vertical barrier the model was trained for. Stop and target orders are the
  risk manager's.

Sizing is risk's business.
"""

from __future__ import annotations

from bot.domain import OrderIntent, Regime, Side, Signal
from bot.ports import PortfolioView
from risk.sizing import break_even


class EnsembleStrategy:
    def __init__(self, k_stop: float, k_target: float, horizon: int, step_ms: int,
                 cost: float = 0.003, max_dispersion: float = 0.2,
                 blocked_regimes: frozenset[Regime] = frozenset({Regime.BEAR})) -> None:
        self.k_stop, self.k_target = k_stop, k_target
        self.b = k_target / k_stop
        self.horizon, self.step = horizon, step_ms
        self.cost = cost
        self.max_dispersion = max_dispersion
        self.exit_below = break_even(self.b)
        self.blocked = blocked_regimes

    def entry_bar(self, signal: Signal) -> float | None:
        """The p an entry must beat at this price and ATR (None: no ATR, no bet)."""
        if not (signal.price > 0 and signal.atr > 0):
            return None
        d = self.k_stop * signal.atr / signal.price
        return break_even(self.b, self.cost / d)

    def decide(self, signal: Signal, portfolio: PortfolioView) -> OrderIntent | None:
        if any(not o.is_protective for o in portfolio.working_orders(signal.symbol)):
            return None
        pos = portfolio.position(signal.symbol)
        held = pos.quantity
        bear = signal.regime in self.blocked
        if held > 0:
            age = (signal.ts + self.step - pos.updated_ts) // self.step
            why = ("bear regime" if bear else
                   f"time limit: {age} candles held (horizon {self.horizon})"
                   if age >= self.horizon else
                   f"p {signal.p_up:.3f} below break-even {self.exit_below:.3f}"
                   if signal.p_up < self.exit_below else None)
            if why is None:
                return None
            return OrderIntent(signal.symbol, Side.SELL, f"ensemble exit: {why}", signal.ts,
                               signal.model_version, reduce_only=True, quantity=held,
                               confidence=1 - signal.p_up, dispersion=signal.dispersion)
        if held != 0 or bear:
            return None
        bar = self.entry_bar(signal)
        if bar is None or signal.p_up <= bar or signal.dispersion > self.max_dispersion:
            return None
        return OrderIntent(signal.symbol, Side.BUY,
                           f"ensemble entry: p {signal.p_up:.3f} > break-even {bar:.3f} "
                           f"(b {self.b:.2f}, costs included)", signal.ts,
                           signal.model_version, confidence=signal.p_up,
                           dispersion=signal.dispersion)
