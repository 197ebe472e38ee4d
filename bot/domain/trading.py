"""Trading: sides, order types and states, signals, intents, risk decisions, orders, fills,
positions, equity snapshots and audit events. Everything that is money or quantity is a
``Decimal``, so that the ledger reconciles exactly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from bot.domain.market import ZERO, Regime
from bot.domain.message import evolve, message


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"


class OrderStatus(StrEnum):
    """Explicit order states, in-flight ones included (after nautilus_trader)."""

    PENDING_SUBMIT = "pending_submit"  # intent committed to the ledger, request not yet acked
    OPEN = "open"  # acknowledged by the venue, resting or about to fill
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_working(self) -> bool:
        """Live at the venue (or possibly live, for PENDING_SUBMIT): must be tracked."""
        return not self.is_terminal


_TERMINAL = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED})

ALLOWED_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING_SUBMIT: frozenset(
        {
            OrderStatus.OPEN,
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.FILLED,
            OrderStatus.CANCELLED,
            OrderStatus.REJECTED,
        }
    ),
    OrderStatus.OPEN: frozenset(
        {OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED, OrderStatus.CANCELLED}
    ),
    OrderStatus.PARTIALLY_FILLED: frozenset(
        {OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED, OrderStatus.CANCELLED}
    ),
    OrderStatus.FILLED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
    OrderStatus.REJECTED: frozenset(),
}


class InvalidTransition(ValueError):
    """An order was asked to move to a state its current state does not allow."""


@message
class Signal:
    """What a signal source believes about the next move of one symbol, at candle ``ts``."""

    symbol: str
    ts: int
    p_up: float
    expected_return: float
    source: str
    model_version: str
    dispersion: float = 0.0
    regime: Regime = Regime.UNKNOWN
    price: float = 0.0  # the close the signal was computed on
    atr: float = 0.0  # average true range at ts, in price units (0 when unknown)
    # each ensemble member's calibrated p, as (name, p) pairs; empty for a single model
    members: tuple[tuple[str, float], ...] = ()


@message
class OrderIntent:
    """What the strategy wants. Risk decides how much, or whether at all."""

    symbol: str
    side: Side
    reason: str
    signal_ts: int
    model_version: str
    order_type: OrderType = OrderType.MARKET
    reduce_only: bool = False
    quantity: Decimal | None = None  # None: let risk size it
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    # calibrated P(the move goes our way: target before stop); None: the signal has no
    # calibrated probability, so risk sizes it fixed-fractional
    confidence: float | None = None
    dispersion: float = 0.0  # disagreement between ensemble members


@message
class RiskDecision:
    intent: OrderIntent
    approved: bool
    quantity: Decimal
    reason: str


@message
class Fill:
    fill_id: str
    client_order_id: str
    account: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal
    fee_currency: str
    ts: int
    liquidity: str = "taker"
    # a perpetual's P&L as the venue booked it for this trade (Binance ``realizedPnl``, to its
    # precision): what moved the venue's wallet, so it moves the ledger's cash. None: computed
    realized_pnl: Decimal | None = None

    @property
    def notional(self) -> Decimal:
        return self.quantity * self.price


@message
class Order:
    client_order_id: str
    account: str
    run_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    status: OrderStatus
    created_ts: int
    updated_ts: int
    signal_ts: int
    model_version: str
    reason: str
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    filled_qty: Decimal = ZERO
    avg_fill_price: Decimal = ZERO
    fees: Decimal = ZERO
    exchange_order_id: str | None = None
    reduce_only: bool = False
    status_reason: str = ""

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.filled_qty

    @property
    def is_protective(self) -> bool:
        """A resting stop that guards a position (placed by risk, not by a strategy)."""
        return self.reduce_only and self.order_type is OrderType.STOP

    def transition(self, status: OrderStatus, ts: int, reason: str = "") -> Order:
        """A copy in ``status``; raises ``InvalidTransition`` when the state machine forbids it."""
        if status not in ALLOWED_TRANSITIONS[self.status]:
            raise InvalidTransition(
                f"order {self.client_order_id}: {self.status.value} -> {status.value} not allowed"
            )
        return evolve(self, status=status, updated_ts=ts, status_reason=reason)

    def apply_fill(self, fill: Fill) -> Order:
        """A copy with the fill added; FILLED or PARTIALLY_FILLED accordingly."""
        if fill.client_order_id != self.client_order_id:
            raise ValueError(f"fill {fill.fill_id} is for {fill.client_order_id}")
        filled = self.filled_qty + fill.quantity
        if filled > self.quantity:
            raise ValueError(
                f"order {self.client_order_id}: fill {fill.fill_id} overfills "
                f"({filled} > {self.quantity})"
            )
        avg = (self.avg_fill_price * self.filled_qty + fill.price * fill.quantity) / filled
        status = OrderStatus.FILLED if filled == self.quantity else OrderStatus.PARTIALLY_FILLED
        moved = self.transition(status, fill.ts) if status != self.status else self
        return evolve(
            moved, filled_qty=filled, avg_fill_price=avg, fees=self.fees + fill.fee
        )


@message
class Position:
    """Signed holdings of one symbol in one account; ``quantity`` > 0 is long."""

    account: str
    symbol: str
    quantity: Decimal = ZERO
    avg_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    updated_ts: int = 0
    # perpetuals: where the venue would liquidate it, on the mark price (None for spot)
    liquidation_price: Decimal | None = None

    def apply_fill(self, fill: Fill) -> Position:
        """Average-cost accounting. Realized P&L excludes fees (fees are booked to cash)."""
        signed = fill.quantity * fill.side.sign
        qty, avg, realized = self.quantity, self.avg_price, self.realized_pnl
        if qty == 0 or (qty > 0) == (signed > 0):
            new_qty = qty + signed
            avg = (avg * abs(qty) + fill.price * abs(signed)) / abs(new_qty)
        else:
            closing = min(abs(signed), abs(qty))
            direction = 1 if qty > 0 else -1
            realized += (fill.price - avg) * closing * direction
            new_qty = qty + signed
            if new_qty == 0:
                avg = ZERO
            elif (new_qty > 0) != (qty > 0):  # flipped through zero
                avg = fill.price
        return Position(self.account, self.symbol, new_qty, avg, realized, fill.ts)

    def market_value(self, price: Decimal) -> Decimal:
        return self.quantity * price


@message
class CashFlow:
    """Cash that moves without a trade: a perpetual's funding (``kind`` "funding"). ``amount``
    is signed, as the account sees it (negative: paid); ``rate``, ``mark`` and ``notional``
    say how it was computed."""

    flow_id: str
    account: str
    symbol: str
    kind: str
    amount: Decimal
    ts: int
    rate: Decimal = ZERO
    mark: Decimal = ZERO
    notional: Decimal = ZERO


@message
class AuditEvent:
    """One entry of the append-only audit trail."""

    kind: str
    entity: str
    entity_id: str
    account: str
    run_id: str
    ts: int
    payload: Mapping[str, Any] = field(default_factory=dict)


@message
class EquitySnapshot:
    account: str
    run_id: str
    ts: int
    cash: Decimal
    positions_value: Decimal

    @property
    def equity(self) -> Decimal:
        return self.cash + self.positions_value
