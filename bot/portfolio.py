"""The account as the engine sees it: cash, positions, working orders and last prices.

Spot holdings are bought with cash and valued at the last price. A perpetual (a ``margined``
symbol) is not: its fills move cash only by realized P&L and fees, and its value is its
unrealized P&L at the mark price. Either way equity is cash plus ``positions_value``.

Pure in-memory bookkeeping; the ledger persists it. Strategies and risk read it through
``PortfolioView``; only the engine mutates it, from broker updates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal

from bot.domain import ZERO, Candle, CashFlow, Fill, Order, Position, Side, evolve


def to_decimal(value: float) -> Decimal:
    """A float price as the shortest Decimal that round-trips (no binary noise)."""
    return Decimal(repr(value))


class LastCloses:
    """Each symbol's last close: kept as the float a candle brings, and converted to an exact
    Decimal only when first asked for, not on every candle (most candles are never priced)."""

    __slots__ = ("_floats", "_decimals")

    def __init__(self) -> None:
        self._floats: dict[str, float] = {}
        self._decimals: dict[str, Decimal] = {}

    def update(self, symbol: str, close: float) -> None:
        if self._floats.get(symbol) != close:
            self._floats[symbol] = close
            self._decimals.pop(symbol, None)

    def get(self, symbol: str) -> Decimal | None:
        price = self._decimals.get(symbol)
        if price is None:
            close = self._floats.get(symbol)
            if close is None:
                return None
            price = self._decimals[symbol] = to_decimal(close)
        return price


class WorkingOrders:
    """Working orders by client id, in arrival order, and the same by symbol: a candle
    looks at its own symbol's orders without walking every other symbol's."""

    __slots__ = ("_all", "_of")

    def __init__(self) -> None:
        self._all: dict[str, Order] = {}
        self._of: dict[str, dict[str, Order]] = {}

    def __contains__(self, cid: str) -> bool:
        return cid in self._all

    def __len__(self) -> int:
        return len(self._all)

    def get(self, cid: str) -> Order | None:
        return self._all.get(cid)

    def put(self, order: Order) -> None:
        """Add ``order``, or replace the one with its client id where it stands."""
        self._all[order.client_order_id] = order
        mine = self._of.get(order.symbol)
        if mine is None:
            mine = self._of[order.symbol] = {}
        mine[order.client_order_id] = order

    def pop(self, cid: str) -> Order | None:
        order = self._all.pop(cid, None)
        if order is not None:
            del self._of[order.symbol][cid]
        return order

    def all(self) -> list[Order]:
        return list(self._all.values())

    def of(self, symbol: str) -> list[Order]:
        """``symbol``'s orders, in arrival order (a copy: safe to change the book meanwhile)."""
        mine = self._of.get(symbol)
        return list(mine.values()) if mine else []


class Portfolio:
    def __init__(self, account: str, cash: Decimal, quote: str,
                 margined: Iterable[str] = ()) -> None:
        self.account = account
        self.quote = quote
        self.margined = frozenset(margined)
        self._marks: dict[str, Decimal] = {}
        self._cash = cash
        self._positions: dict[str, Position] = {}
        self._orders = WorkingOrders()
        self._closes = LastCloses()

    # ---- PortfolioView -------------------------------------------------------------------
    @property
    def cash(self) -> Decimal:
        return self._cash

    def position(self, symbol: str) -> Position:
        pos = self._positions.get(symbol)
        return pos if pos is not None else Position(self.account, symbol)

    def positions(self) -> list[Position]:
        return [p for p in self._positions.values() if p.quantity != 0]

    def working_orders(self, symbol: str | None = None) -> Sequence[Order]:
        return self._orders.all() if symbol is None else self._orders.of(symbol)

    def price(self, symbol: str) -> Decimal | None:
        return self._closes.get(symbol)

    def mark_price(self, symbol: str) -> Decimal | None:
        return self._marks.get(symbol) or self.price(symbol)

    def positions_value(self) -> Decimal:
        total = ZERO
        for sym, pos in self._positions.items():
            if pos.quantity:
                if sym in self.margined:
                    mark = self._marks.get(sym) or self.price(sym) or pos.avg_price
                    total += pos.quantity * (mark - pos.avg_price)
                else:
                    total += pos.quantity * (self.price(sym) or pos.avg_price)
        return total

    def equity(self) -> Decimal:
        return self._cash + self.positions_value()

    def exposure(self) -> Decimal:
        return sum((abs(p.quantity) * (self.price(s) or p.avg_price)
                    for s, p in self._positions.items()), ZERO)

    # ---- mutation (engine only) ----------------------------------------------------------
    def mark(self, candle: Candle) -> None:
        self._closes.update(candle.symbol, candle.close)
        if candle.mark is not None:
            self._marks[candle.symbol] = to_decimal(candle.mark.close)

    def book_flow(self, flow: CashFlow) -> None:
        """Cash that moves without a trade (funding)."""
        self._cash += flow.amount

    def set_liquidation(self, symbol: str, price: Decimal | None) -> Position:
        pos = self.position(symbol)
        if pos.liquidation_price != price:
            pos = evolve(pos, liquidation_price=price)
            self._positions[symbol] = pos
        return pos

    def restore(self, positions: Iterable[Position], orders: Iterable[Order],
                cash: Decimal | None = None) -> None:
        """Carry on from what the ledger holds (a restart); ``cash`` None: keep the start."""
        if cash is not None:
            self._cash = cash
        for p in positions:
            self._positions[p.symbol] = p
        for o in orders:
            self._orders.put(o)

    def adopt(self, cash: Decimal, positions: Iterable[Position]) -> None:
        """Take the venue's balances as the starting point (an account's first start)."""
        self._cash = cash
        for p in positions:
            self._positions[p.symbol] = p

    def track(self, order: Order) -> None:
        if order.status.is_terminal:
            self._orders.pop(order.client_order_id)
        else:
            self._orders.put(order)

    def apply_fill(self, fill: Fill) -> Position:
        """Book a fill: position by average cost, cash by notional; the fee comes off the cash
        when charged in the quote currency, off the holdings when charged in the base asset."""
        notional = fill.quantity * fill.price
        quote_fee = fill.fee if fill.fee_currency == self.quote else ZERO
        if fill.symbol in self.margined:
            before = self.position(fill.symbol)
            pos = before.apply_fill(fill)
            if fill.realized_pnl is not None:  # the venue's own figure, as its wallet moved
                pos = Position(pos.account, pos.symbol, pos.quantity, pos.avg_price,
                               before.realized_pnl + fill.realized_pnl, pos.updated_ts,
                               pos.liquidation_price)
            self._cash += pos.realized_pnl - before.realized_pnl - quote_fee
            self._positions[fill.symbol] = pos
            return pos
        if fill.side is Side.BUY:
            self._cash -= notional + quote_fee
        else:
            self._cash += notional - quote_fee
        pos = self.position(fill.symbol).apply_fill(fill)
        if fill.fee and fill.fee_currency == fill.symbol.split("/")[0]:
            pos = Position(pos.account, pos.symbol, pos.quantity - fill.fee, pos.avg_price,
                           pos.realized_pnl, pos.updated_ts)
        self._positions[fill.symbol] = pos
        return pos
