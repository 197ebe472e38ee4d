"""The ensemble strategy (long-only spot).

- Enter only when the expected edge beats the round-trip costs: P(up) > 0.5 and the edge
  exceeds ``cost``. The edge is the larger of the members' forecast return and the return the
  calibrated probability implies at the current volatility: (2·P(up) − 1) · ATR/price ·
  sqrt(horizon). Regression heads shrink towards zero, so the probability is the better guide.
- Skip entries when the members disagree (dispersion above ``max_dispersion``). Between zero
  and that limit, the risk manager shrinks the size.
- Regime gating: no entries in the bear regime (the VAE's regime 0), and a held position is
  closed there.
- Exit when P(up) falls below ``exit_below``.

Sizing is risk's business.
"""

from __future__ import annotations

from bot.domain import OrderIntent, Side, Signal
from bot.ports import PortfolioView


class EnsembleStrategy:
    def __init__(self, cost: float = 0.003, max_dispersion: float = 0.2,
                 exit_below: float = 0.48, blocked_regimes: frozenset[int] = frozenset({0}),
                 horizon: int = 4) -> None:
        self.cost = cost
        self.horizon = horizon
        self.max_dispersion = max_dispersion
        self.exit_below = exit_below
        self.blocked = blocked_regimes

    def edge(self, signal: Signal) -> float:
        implied = 0.0
        if signal.price > 0 and signal.atr > 0:
            implied = (2 * signal.p_up - 1) * signal.atr / signal.price * self.horizon ** 0.5
        return max(signal.expected_return, implied)

    def decide(self, signal: Signal, portfolio: PortfolioView) -> OrderIntent | None:
        if any(not o.is_protective for o in portfolio.working_orders(signal.symbol)):
            return None
        held = portfolio.position(signal.symbol).quantity
        bear = signal.regime is not None and signal.regime in self.blocked
        if held > 0:
            if signal.p_up < self.exit_below or bear:
                why = "bear regime" if bear else f"P(up) {signal.p_up:.3f} below {self.exit_below}"
                return OrderIntent(signal.symbol, Side.SELL, f"ensemble exit: {why}", signal.ts,
                                   signal.model_version, reduce_only=True, quantity=held,
                                   confidence=1 - signal.p_up, dispersion=signal.dispersion)
            return None
        if held != 0 or bear or signal.p_up <= 0.5:
            return None
        edge = self.edge(signal)
        if edge <= self.cost or signal.dispersion > self.max_dispersion:
            return None
        return OrderIntent(signal.symbol, Side.BUY,
                           f"ensemble entry: P(up) {signal.p_up:.3f}, edge {edge:.4f} > cost "
                           f"{self.cost}", signal.ts,
                           signal.model_version, confidence=signal.p_up,
                           dispersion=signal.dispersion)
