"""The messages that flow between stages: feed -> signal -> strategy -> risk -> broker -> ledger.

Every message is a frozen, slotted dataclass. Prices and volumes on candles are floats (they feed
numeric features); everything that is money or quantity on an order, fill or position is a
``Decimal`` so that the ledger reconciles exactly.

Times are integer milliseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

ZERO = Decimal(0)

TIMEFRAME_MS: dict[str, int] = {
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
}


def timeframe_ms(timeframe: str) -> int:
    """Milliseconds in one candle of ``timeframe``; a clear error for an unknown one."""
    try:
        return TIMEFRAME_MS[timeframe]
    except KeyError:
        known = ", ".join(TIMEFRAME_MS)
        raise ValueError(f"unknown timeframe {timeframe!r}; known: {known}") from None


class Mode(StrEnum):
    BACKTEST = "backtest"
    PAPER = "paper"
    LIVE = "live"


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


@dataclass(frozen=True, slots=True)
class Candle:
    """One closed OHLCV candle. ``ts`` is the candle's open time."""

    symbol: str
    timeframe: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float

    @property
    def close_ts(self) -> int:
        return self.ts + timeframe_ms(self.timeframe)


@dataclass(frozen=True, slots=True)
class Gap:
    """Missing candles between two present ones: reported and handled, never bridged."""

    symbol: str
    timeframe: str
    after_ts: int  # open time of the last candle before the hole
    next_ts: int  # open time of the first candle after it

    @property
    def missing(self) -> int:
        return (self.next_ts - self.after_ts) // timeframe_ms(self.timeframe) - 1


@dataclass(frozen=True, slots=True)
class Warmup:
    """Closed candles too old to trade on (history at start, a long backfill): they only
    bring the signal source up to date."""

    candles: tuple[Candle, ...]


class Regime(StrEnum):
    """The market regime a signal source sees. ``UNKNOWN`` when it has no regime model or its
    model is not confident; only ``BEAR`` blocks the ensemble strategy's entries."""

    UNKNOWN = "unknown"
    BEAR = "bear"
    NEUTRAL = "neutral"
    BULL = "bull"


class FeedState(StrEnum):
    FALLBACK = "fallback"  # the websocket failed or went silent: polling REST
    WS_RESTORED = "ws_restored"  # back on the websocket
    STALE = "stale"  # reads keep failing: no fresh data, no entries
    FRESH = "fresh"  # data flows again after a stale spell


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """What the feed says about itself: which source it reads and whether it is stale."""

    state: FeedState
    source: str  # "ws" or "rest"
    reason: str
    failures: int = 0  # consecutive failed reads when it was sent


@dataclass(frozen=True, slots=True)
class MarketSpec:
    """What the venue allows for one symbol: precision, minimums and fees."""

    symbol: str
    base: str
    quote: str
    amount_step: Decimal = Decimal("0.00000001")
    price_tick: Decimal = Decimal("0.00000001")
    min_qty: Decimal = ZERO
    min_notional: Decimal = ZERO
    maker_fee: Decimal = Decimal("0.001")
    taker_fee: Decimal = Decimal("0.001")

    def floor_qty(self, qty: Decimal) -> Decimal:
        """Round a quantity down to the venue's step (never up: never buy more than paid for)."""
        step = self.amount_step
        return (qty // step) * step if step > 0 else qty

    def round_price(self, price: Decimal) -> Decimal:
        tick = self.price_tick
        return (price / tick).to_integral_value() * tick if tick > 0 else price

    def minimum_problem(self, qty: Decimal, price: Decimal) -> str | None:
        """Why the venue would refuse this size, or None."""
        if qty <= 0:
            return "quantity rounds to zero at the market's precision"
        if qty < self.min_qty:
            return f"quantity {qty} below the market minimum {self.min_qty}"
        if qty * price < self.min_notional:
            return f"notional {qty * price:.8f} below the market minimum {self.min_notional}"
        return None


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class RiskDecision:
    intent: OrderIntent
    approved: bool
    quantity: Decimal
    reason: str


@dataclass(frozen=True, slots=True)
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

    @property
    def notional(self) -> Decimal:
        return self.quantity * self.price


@dataclass(frozen=True, slots=True)
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
        return dataclasses.replace(self, status=status, updated_ts=ts, status_reason=reason)

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
        return dataclasses.replace(
            moved, filled_qty=filled, avg_fill_price=avg, fees=self.fees + fill.fee
        )


@dataclass(frozen=True, slots=True)
class Position:
    """Signed holdings of one symbol in one account; ``quantity`` > 0 is long."""

    account: str
    symbol: str
    quantity: Decimal = ZERO
    avg_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    updated_ts: int = 0

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


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One entry of the append-only audit trail."""

    kind: str
    entity: str
    entity_id: str
    account: str
    run_id: str
    ts: int
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EquitySnapshot:
    account: str
    run_id: str
    ts: int
    cash: Decimal
    positions_value: Decimal

    @property
    def equity(self) -> Decimal:
        return self.cash + self.positions_value
