"""The ensemble strategy: long on spot, long and short on perpetuals.

The ensemble's p is the calibrated probability that the upper barrier (``k_target`` ATRs
above) is touched before the lower one (``k_stop`` ATRs below) within ``horizon`` candles: the
triple barrier the model was trained on. One model prices both sides of that bet
(``risk.sizing.bet_distances``):

- a **long** wins at the upper barrier: its win probability is ``p``, its stop ``k_stop``
  ATRs below, its payoff ``b = k_target / k_stop``;
- a **short** wins at the lower barrier: its win probability is ``q = 1 - p`` (P(lower
  barrier first)), its stop ``k_target`` ATRs above, its payoff ``b = k_stop / k_target``.

Each side is judged in its own bet's units, R (the amount lost at its stop), as the sizing
does:

- Enter only when the side's expectation net of costs is positive: ``w * b - (1 - w) - c > 0``
  for its win probability ``w``, with the round-trip costs ``c = cost / d`` in R, where ``d``
  is its stop distance as a share of the price. That is ``w`` above the break-even
  ``(1 + c) / (1 + b)`` (``risk.sizing.break_even``), the same test the risk manager applies,
  so no intent is sent only to be refused. With costs, both sides' bars sum to more than 1, so
  at most one side clears its bar.
- Skip entries when the members disagree (dispersion above ``max_dispersion``). Between zero
  and that limit, the risk manager shrinks the size.
- Regime gating: no long entries in the bear regime and no short entries in the bull regime;
  a held position in the regime against it is closed. An unknown regime (no VAE member, or
  one that is not confident) blocks nothing.
- Exit when the held side's win probability falls below its cost-free break-even
  ``1 / (1 + b)`` (a fresh bet would now lose in expectation), or when the position reaches
  the time limit: ``horizon`` candles after its last fill, the vertical barrier the model was
  trained for. Stop and target orders are the risk manager's.

Shorts only with ``shorts`` (perpetuals); a spot account never opens one. Sizing is risk's
business.

One asymmetry is the labels': when one candle touches both barriers, the label counts the
lower barrier first (the worst case for a long), which for a short is the best case. Such
rows are rare (a candle spanning ``k_stop + k_target`` ATRs from the entry's close); the
paper broker and the risk manager still fill a short's stop first in such a candle.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain import OrderIntent, Regime, Side, Signal
from bot.ports import PortfolioView
from risk.sizing import bet_distances, break_even


@dataclass(frozen=True, slots=True)
class _Bet:
    """One side of the triple barrier: its direction, distances, payoff and the regime that
    blocks it."""

    side: Side  # the entry's side
    stop_atr: float
    payoff: float  # b: target / stop
    blocked: frozenset[Regime]

    @classmethod
    def on(cls, side: Side, k_stop: float, k_target: float, blocked: frozenset[Regime]) -> _Bet:
        """``side``'s bet on the triple barrier of ``k_stop`` below and ``k_target`` above."""
        stop, target = bet_distances(k_stop, k_target, side.sign)
        return cls(side, stop, target / stop, blocked)

    @property
    def exit_below(self) -> float:
        return break_even(self.payoff)

    def win(self, signal: Signal) -> float:
        """This side's win probability: p for a long, 1 - p for a short."""
        return signal.p_up if self.side is Side.BUY else 1.0 - signal.p_up

    def bar(self, signal: Signal, cost: float) -> float | None:
        """The win probability an entry must beat at this price and ATR (None: no ATR)."""
        if not (signal.price > 0 and signal.atr > 0):
            return None
        d = self.stop_atr * signal.atr / signal.price
        return break_even(self.payoff, cost / d)


class EnsembleStrategy:
    def __init__(self, k_stop: float, k_target: float, horizon: int, step_ms: int,
                 cost: float = 0.003, max_dispersion: float = 0.2,
                 blocked_regimes: frozenset[Regime] = frozenset({Regime.BEAR}),
                 shorts: bool = False,
                 blocked_short_regimes: frozenset[Regime] = frozenset({Regime.BULL})) -> None:
        self.horizon, self.step = horizon, step_ms
        self.cost = cost
        self.max_dispersion = max_dispersion
        self.shorts = shorts
        self.long = _Bet.on(Side.BUY, k_stop, k_target, blocked_regimes)
        self.short = _Bet.on(Side.SELL, k_stop, k_target, blocked_short_regimes)

    def entry_bar(self, signal: Signal) -> float | None:
        """The p a long entry must beat at this price and ATR (None: no ATR, no bet)."""
        return self.long.bar(signal, self.cost)

    def decide(self, signal: Signal, portfolio: PortfolioView) -> OrderIntent | None:
        if any(not o.is_protective for o in portfolio.working_orders(signal.symbol)):
            return None
        pos = portfolio.position(signal.symbol)
        held = pos.quantity
        if held != 0:
            bet = self.long if held > 0 else self.short
            w = bet.win(signal)
            age = (signal.ts + self.step - pos.updated_ts) // self.step
            why = (f"{signal.regime.value} regime" if signal.regime in bet.blocked else
                   f"time limit: {age} candles held (horizon {self.horizon})"
                   if age >= self.horizon else
                   f"win p {w:.3f} below break-even {bet.exit_below:.3f}"
                   if w < bet.exit_below else None)
            if why is None:
                return None
            exit_side = Side.SELL if held > 0 else Side.BUY
            return OrderIntent(signal.symbol, exit_side, f"ensemble exit: {why}", signal.ts,
                               signal.model_version, reduce_only=True, quantity=abs(held),
                               confidence=1 - w, dispersion=signal.dispersion)
        if signal.dispersion > self.max_dispersion:
            return None
        for bet in (self.long, self.short) if self.shorts else (self.long,):
            if signal.regime in bet.blocked:
                continue
            bar, w = bet.bar(signal, self.cost), bet.win(signal)
            if bar is None or w <= bar:
                continue
            what = "p" if bet.side is Side.BUY else "q = 1 - p"
            return OrderIntent(signal.symbol, bet.side,
                               f"ensemble {'long' if bet.side is Side.BUY else 'short'} entry: "
                               f"{what} {w:.3f} > break-even {bar:.3f} "
                               f"(b {bet.payoff:.2f}, costs included)", signal.ts,
                               signal.model_version, confidence=w,
                               dispersion=signal.dispersion)
        return None
