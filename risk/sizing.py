"""Position sizing on risk. Pure functions.

A long entry with its stop ``d`` below the price (``d = k_stop * ATR / price``, a fraction of
the price) and its target ``b * d`` above (``b = k_target / k_stop``) is a bet that pays ``b``
per unit risked, with probability ``p`` that the target is touched first. Kelly's fraction of
equity *at risk* is ``f* = p - (1 - p) / b``; the fraction used is ``kelly_fraction * f*``
(shrunk when ensemble members disagree), so the notional is ``that * equity / d``. Costs
(round-trip fees and slippage) are counted in the same unit, as ``c = cost / d`` of the risk:
no trade unless ``p * b - (1 - p) - c > 0``, i.e. above the break-even
``p = (1 + c) / (1 + b)``. Then the caps apply: at most ``max_risk_per_trade`` of equity lost
at the stop here; exposure and notional caps in ``risk/controls.py``.

A short bets on the same triple barrier from the other side (``bet_distances``): the lower
barrier (``k_stop`` ATRs below) is its target and the upper one (``k_target`` ATRs above) its
stop, so ``d = k_target * ATR / price``, ``b = k_stop / k_target``, and its ``p`` is P(lower
barrier first) = 1 - P(upper first). That is the event the model's labels price, so one model
prices both sides; with asymmetric barriers a short risks more than it aims for.

A signal with no calibrated probability (the EMA baseline) is sized fixed-fractional: it
risks ``fixed_risk`` of equity at the stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bot.domain import message


def kelly(p: float, b: float) -> float:
    """Kelly fraction f* = p - (1 - p) / b for win probability p and payoff ratio b."""
    if not (0.0 <= p <= 1.0) or math.isnan(p):
        raise ValueError(f"probability must be in [0, 1], got {p}")
    if b <= 0:
        raise ValueError(f"payoff ratio must be positive, got {b}")
    return p - (1.0 - p) / b


def bet_distances(k_stop: float, k_target: float, direction: float) -> tuple[float, float]:
    """(stop, target) distances in ATRs of a long (``direction`` 1) or a short (-1) on the
    triple barrier with its lower barrier ``k_stop`` and its upper ``k_target`` ATRs away: a
    long stops at the lower barrier and aims at the upper, a short the other way round."""
    return (k_stop, k_target) if direction > 0 else (k_target, k_stop)


def break_even(b: float, cost_r: float = 0.0) -> float:
    """The win probability at which a bet paying ``b`` per unit risked, with costs of
    ``cost_r`` units, has zero expectation: (1 + c) / (1 + b)."""
    return (1.0 + cost_r) / (1.0 + b)


@message
class SizingInputs:
    equity: float
    price: float
    atr: float
    p_win: float | None  # calibrated P(target before stop); None: no probability to bet on
    dispersion: float = 0.0
    direction: float = 1.0  # 1 a long, -1 a short (``bet_distances``)


@dataclass(frozen=True, slots=True)
class SizingParams:
    kelly_fraction: float = 0.25
    k_stop: float = 2.0  # the lower barrier in ATRs: a long's stop, a short's target
    k_target: float = 3.0  # the upper barrier in ATRs: a long's target, a short's stop
    max_risk_per_trade: float = 0.01  # equity share lost if the stop is hit, at most
    round_trip_cost: float = 0.003  # fees + slippage, both ways, as a return
    disagreement_limit: float = 0.25  # dispersion at which the size shrinks to zero
    fixed_risk: float = 0.005  # equity share at risk when there is no calibrated p

    @property
    def payoff(self) -> float:
        return self.k_target / self.k_stop

    def bet(self, direction: float) -> tuple[float, float]:
        """(stop, target) in ATRs for a long (1) or a short (-1)."""
        return bet_distances(self.k_stop, self.k_target, direction)


@message
class Sizing:
    quantity: float
    kelly: float  # f* (0 for fixed-fractional)
    risk: float  # the equity share lost if the stop is hit, after shrink and caps
    edge: float  # expected gain per unit risked, net of costs (in R)
    reason: str


def size_entry(x: SizingInputs, k: SizingParams) -> Sizing:
    """How much to buy (or sell short); ``quantity == 0`` with a reason when there is no
    trade."""
    if x.equity <= 0 or x.price <= 0:
        return Sizing(0.0, 0.0, 0.0, 0.0, "no equity or no price")
    if not (x.atr > 0) or math.isinf(x.atr):
        return Sizing(0.0, 0.0, 0.0, 0.0, "no ATR: cannot place a stop")
    k_stop, k_target = k.bet(x.direction)
    d = k_stop * x.atr / x.price  # the price fraction lost at the stop
    b = k_target / k_stop
    cost_r = k.round_trip_cost / d
    if x.p_win is None:
        f_star, edge = 0.0, math.nan
        risk = k.fixed_risk
        reason = f"fixed-fractional: {k.fixed_risk:.2%} at risk (no calibrated p)"
    else:
        p = x.p_win
        f_star = kelly(p, b)
        edge = p * b - (1.0 - p) - cost_r
        be = break_even(b, cost_r)
        if p <= be:  # (the same test as edge <= 0, without its rounding at the boundary)
            return Sizing(0.0, f_star, 0.0, edge,
                          f"p={p:.4f} at or below break-even {be:.4f} "
                          f"(b={b:.2f}, costs {cost_r:.3f}R)")
        shrink = (max(0.0, 1.0 - x.dispersion / k.disagreement_limit)
                  if k.disagreement_limit > 0 else 1.0)
        if shrink <= 0:
            return Sizing(0.0, f_star, 0.0, edge,
                          f"members disagree (dispersion {x.dispersion:.3f})")
        risk = k.kelly_fraction * f_star * shrink
        reason = f"Kelly {k.kelly_fraction}x f*={f_star:.4f}: {risk:.2%} at risk"
        if shrink < 1:
            reason += f", shrunk x{shrink:.2f} by disagreement"
    if risk > k.max_risk_per_trade:
        risk, reason = k.max_risk_per_trade, (f"{reason}; capped at {k.max_risk_per_trade:.2%} "
                                              "risk per trade")
    qty = risk * x.equity / d / x.price
    return Sizing(qty, f_star, risk, edge, reason)
