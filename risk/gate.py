"""A minimal fixed-fraction risk gate with a per-symbol position cap.

Entries get ``fraction`` of equity, capped so that the symbol's holding stays within
``max_position`` of equity and the cash (with the taker fee) covers it. Exits that reduce
exposure pass at the held size. Every answer carries its reason. The full risk manager of
issue 4 replaces this behind the same ``RiskGate`` protocol.
"""

from __future__ import annotations

from decimal import Decimal

from bot.domain import ZERO, MarketSpec, OrderIntent, RiskDecision, Side
from bot.ports import PortfolioView


class FixedFractionGate:
    def __init__(self, fraction: Decimal, max_position: Decimal, spot: bool = True) -> None:
        self.fraction = fraction
        self.max_position = max_position
        self.spot = spot

    def review(
        self, intent: OrderIntent, portfolio: PortfolioView, market: MarketSpec
    ) -> RiskDecision:
        price = portfolio.price(intent.symbol)
        if price is None or price <= 0:
            return RiskDecision(intent, False, ZERO, "no price for the symbol yet")
        held = portfolio.position(intent.symbol).quantity
        reduces = (intent.side is Side.SELL and held > 0) or (intent.side is Side.BUY and held < 0)
        if intent.reduce_only or reduces:
            if not reduces:
                return RiskDecision(intent, False, ZERO, "reduce-only order would not reduce")
            want = intent.quantity if intent.quantity is not None else abs(held)
            qty = market.floor_qty(min(want, abs(held)))
            problem = market.minimum_problem(qty, price)
            if problem:
                return RiskDecision(intent, False, ZERO, f"exit refused: {problem}")
            return RiskDecision(intent, True, qty, "reduces exposure")
        if self.spot and intent.side is Side.SELL:
            return RiskDecision(intent, False, ZERO, "spot account cannot open a short")
        equity = portfolio.equity()
        if equity <= 0:
            return RiskDecision(intent, False, ZERO, "equity is not positive")
        budget = equity * self.fraction
        room = equity * self.max_position - abs(held) * price
        reserved = sum(
            (o.remaining * (o.limit_price or portfolio.price(o.symbol) or ZERO)
             for o in portfolio.working_orders() if o.side is Side.BUY),
            ZERO,
        )
        cash_cap = (portfolio.cash - reserved) / (1 + market.taker_fee)
        notional = min(budget, room, cash_cap)
        reason = "fixed fraction of equity"
        if notional == room and room < budget:
            reason = "capped by max position"
        if notional == cash_cap and cash_cap < min(budget, room):
            reason = "capped by available cash"
        if intent.quantity is not None:
            notional = min(notional, intent.quantity * price)
        if notional <= 0:
            return RiskDecision(intent, False, ZERO, "no room: position cap or cash exhausted")
        qty = market.floor_qty(notional / price)
        problem = market.minimum_problem(qty, price)
        if problem:
            return RiskDecision(intent, False, ZERO, problem)
        return RiskDecision(intent, True, qty, reason)
