"""Position sizing: fractional Kelly from a calibrated P(up) and the payoff ratio implied by
the ATR stop and target, capped by risk per trade, shrunk by disagreement. Pure functions."""

from __future__ import annotations

import math
from dataclasses import dataclass


def kelly(p: float, b: float) -> float:
    """Kelly fraction f* = p - (1 - p) / b for win probability p and payoff ratio b."""
    if not (0.0 <= p <= 1.0) or math.isnan(p):
        raise ValueError(f"probability must be in [0, 1], got {p}")
    if b <= 0:
        raise ValueError(f"payoff ratio must be positive, got {b}")
    return p - (1.0 - p) / b


@dataclass(frozen=True, slots=True)
class SizingInputs:
    equity: float
    price: float
    atr: float
    p_up: float
    dispersion: float = 0.0


@dataclass(frozen=True, slots=True)
class SizingParams:
    kelly_fraction: float = 0.25
    k_stop: float = 2.0  # stop distance in ATRs
    k_target: float = 3.0  # take-profit distance in ATRs
    max_risk_per_trade: float = 0.01  # equity share lost if the stop is hit
    round_trip_cost: float = 0.003  # fees + slippage, both ways, as a return
    disagreement_limit: float = 0.25  # dispersion at which the size shrinks to zero

    @property
    def payoff(self) -> float:
        return self.k_target / self.k_stop


@dataclass(frozen=True, slots=True)
class Sizing:
    quantity: float
    kelly: float  # f*
    fraction: float  # the equity share actually used (after Kelly multiplier and shrink)
    edge: float  # expected return per unit, net of costs
    reason: str


def size_entry(x: SizingInputs, k: SizingParams) -> Sizing:
    """How much to buy; ``quantity == 0`` with a reason when there is no trade."""
    if x.equity <= 0 or x.price <= 0:
        return Sizing(0.0, 0.0, 0.0, 0.0, "no equity or no price")
    if not (x.atr > 0) or math.isinf(x.atr):
        return Sizing(0.0, 0.0, 0.0, 0.0, "no ATR: cannot place a stop")
    f_star = kelly(x.p_up, k.payoff)
    stop_ret = k.k_stop * x.atr / x.price
    gross = x.p_up * k.k_target * x.atr / x.price - (1 - x.p_up) * stop_ret
    edge = gross - k.round_trip_cost
    if f_star <= 0:
        return Sizing(0.0, f_star, 0.0, edge, f"Kelly f*={f_star:.4f} <= 0")
    if edge <= 0:
        return Sizing(0.0, f_star, 0.0, edge,
                      f"expected edge {gross:.5f} does not cover costs {k.round_trip_cost:.5f}")
    shrink = max(0.0, 1.0 - x.dispersion / k.disagreement_limit) if k.disagreement_limit > 0 else 1.0
    if shrink <= 0:
        return Sizing(0.0, f_star, 0.0, edge, f"members disagree (dispersion {x.dispersion:.3f})")
    fraction = k.kelly_fraction * f_star * shrink
    qty = x.equity * fraction / x.price
    reason = f"Kelly {k.kelly_fraction}x f*={f_star:.4f}"
    if shrink < 1:
        reason += f", shrunk x{shrink:.2f} by disagreement"
    risk_cap = x.equity * k.max_risk_per_trade / (k.k_stop * x.atr)
    if qty > risk_cap:
        qty, reason = risk_cap, f"capped by risk per trade ({k.max_risk_per_trade:.2%})"
        fraction = qty * x.price / x.equity
    return Sizing(qty, f_star, fraction, edge, reason)
