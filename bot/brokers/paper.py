"""The paper broker: a simulated venue with its own balances and a candle-driven fill model.

- Market orders fill at the next candle's open, moved against us by ``slippage_bps``.
- Limit orders fill when price trades through the limit (at the open if it gapped through).
- Stop orders trigger inside the candle and fill at the stop, or at the open if price gapped
  through it, with slippage; once triggered they behave as market orders.
- No fill takes more than ``participation`` of a candle's volume: the rest stays working and
  the order is PARTIALLY_FILLED.
- Fees come from the market's maker/taker rates unless ``fee_rate`` overrides them; quantities
  and prices are rounded to the market's precision and checked against its minimums.
- Like a real exchange it refuses what the balances cannot pay for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal

from bot.clock import Clock
from bot.domain import (
    ZERO,
    Candle,
    Fill,
    MarketSpec,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Position,
    Side,
    VenueState,
)
from bot.portfolio import to_decimal

MarketSource = Callable[[Sequence[str]], Awaitable[Mapping[str, MarketSpec]]]
BPS = Decimal("0.0001")
FEE_QUANTUM = Decimal("0.00000001")  # venues book fees to 8 decimals


class PaperBroker:
    def __init__(
        self,
        market_source: MarketSource,
        clock: Clock,
        quote: str,
        starting_cash: Decimal,
        slippage_bps: Decimal = Decimal("2"),
        participation: Decimal = Decimal("0.1"),
        fee_rate: Decimal | None = None,
    ) -> None:
        self._market_source = market_source
        self._clock = clock
        self.quote = quote
        self.cash = starting_cash
        self.holdings: dict[str, Decimal] = {}
        self._slip = slippage_bps * BPS
        self._participation = participation
        self._fee_rate = fee_rate
        self._specs: dict[str, MarketSpec] = {}
        self._working: dict[str, Order] = {}  # client id -> order, in arrival order
        self._triggered: set[str] = set()  # stop orders that have triggered
        self._last_close: dict[str, Decimal] = {}
        self._fill_seq: dict[str, int] = {}

    async def markets(self, symbols: Sequence[str]) -> Mapping[str, MarketSpec]:
        specs = await self._market_source(symbols)
        self._specs.update(specs)
        return specs

    def restore(
        self, orders: Sequence[Order], positions: Sequence[Position], cash: Decimal
    ) -> None:
        self.cash = cash
        self.holdings = {p.symbol: p.quantity for p in positions}
        for o in orders:
            if o.status is OrderStatus.PENDING_SUBMIT:
                continue  # never reached this venue: the engine resubmits it
            self._working[o.client_order_id] = o
            self._fill_seq[o.client_order_id] = 0 if o.filled_qty == 0 else 1_000

    # ---- requests -----------------------------------------------------------------------
    async def submit(self, order: Order) -> OrderUpdate:
        now = self._clock.now_ms()
        if order.client_order_id in self._working:
            return OrderUpdate(self._working[order.client_order_id], note="duplicate client id")
        spec = self._specs.get(order.symbol)
        if spec is None:
            return OrderUpdate(order.transition(OrderStatus.REJECTED, now, "unknown symbol"))
        problem = self._problem(order, spec)
        if problem:
            return OrderUpdate(order.transition(OrderStatus.REJECTED, now, problem))
        acked = order.transition(OrderStatus.OPEN, now)
        self._working[order.client_order_id] = acked
        self._fill_seq.setdefault(order.client_order_id, 0)
        return OrderUpdate(acked)

    async def cancel(self, order: Order) -> OrderUpdate:
        live = self._working.pop(order.client_order_id, None)
        now = self._clock.now_ms()
        if live is None:
            return OrderUpdate(order, note="not working at the venue")
        self._triggered.discard(order.client_order_id)
        return OrderUpdate(live.transition(OrderStatus.CANCELLED, now, "cancelled on request"))

    def _problem(self, order: Order, spec: MarketSpec) -> str | None:
        if order.quantity != spec.floor_qty(order.quantity):
            return f"quantity {order.quantity} is not a multiple of the step {spec.amount_step}"
        price = order.limit_price or order.stop_price or self._last_close.get(order.symbol)
        if price is None:
            return None  # no reference yet: checked at fill time
        minimum = spec.minimum_problem(order.quantity, price)
        if minimum:
            return minimum
        if order.side is Side.BUY:
            cost = order.quantity * price * (1 + self._fee(order, spec))
            free = self.cash - self._reserved_cash()
            if cost > free:
                return f"insufficient funds: needs {cost:.8f} {self.quote}, {free:.8f} free"
        else:
            held = self.holdings.get(order.symbol, ZERO) - self._reserved_base(order.symbol)
            if order.quantity > held:
                return f"insufficient balance: sells {order.quantity}, holds {held}"
        return None

    def _reserved_cash(self) -> Decimal:
        total = ZERO
        for o in self._working.values():
            if o.side is Side.BUY:
                ref = o.limit_price or o.stop_price or self._last_close.get(o.symbol, ZERO)
                total += o.remaining * ref
        return total

    def _reserved_base(self, symbol: str) -> Decimal:
        return sum(
            (
                o.remaining
                for o in self._working.values()
                if o.symbol == symbol and o.side is Side.SELL
            ),
            ZERO,
        )

    def _fee(self, order: Order, spec: MarketSpec, maker: bool = False) -> Decimal:
        if self._fee_rate is not None:
            return self._fee_rate
        return spec.maker_fee if maker else spec.taker_fee

    # ---- the fill model -----------------------------------------------------------------
    async def on_candle(self, candle: Candle) -> list[OrderUpdate]:
        self._last_close[candle.symbol] = to_decimal(candle.close)
        updates: list[OrderUpdate] = []
        for cid in [k for k, o in self._working.items() if o.symbol == candle.symbol]:
            order = self._working[cid]
            if candle.ts <= order.signal_ts:
                continue  # decided on this candle's close or later: fills from the next one
            update = self._match(order, candle)
            if update is not None:
                updates.append(update)
        return updates

    def _match(self, order: Order, c: Candle) -> OrderUpdate | None:
        spec = self._specs[order.symbol]
        open_ = to_decimal(c.open)
        buy = order.side is Side.BUY
        maker = False
        if order.order_type is OrderType.MARKET or order.client_order_id in self._triggered:
            price = open_ * (1 + self._slip) if buy else open_ * (1 - self._slip)
        elif order.order_type is OrderType.LIMIT:
            limit = order.limit_price
            assert limit is not None
            through = c.low < limit if buy else c.high > limit
            if not through:
                return None
            gapped = open_ < limit if buy else open_ > limit
            price, maker = (open_, False) if gapped else (limit, True)
        else:  # STOP
            stop = order.stop_price
            assert stop is not None
            hit = c.high >= stop if buy else c.low <= stop
            if not hit:
                return None
            self._triggered.add(order.client_order_id)
            base = max(open_, stop) if buy else min(open_, stop)
            price = base * (1 + self._slip) if buy else base * (1 - self._slip)
        price = spec.round_price(price)
        cap = spec.floor_qty(to_decimal(c.volume) * self._participation)
        qty = min(order.remaining, cap)
        fee_rate = self._fee(order, spec, maker)
        note = ""
        if buy:
            affordable = spec.floor_qty(self.cash / (price * (1 + fee_rate)))
            if affordable < qty:
                qty, note = affordable, "insufficient funds at fill; remainder cancelled"
        else:
            held = self.holdings.get(order.symbol, ZERO)
            if held < qty:
                qty, note = (
                    spec.floor_qty(held),
                    "insufficient balance at fill; remainder cancelled",
                )
        if qty <= 0:
            if note:
                return self._cancel_rest(order, c.ts, note)
            return None  # no volume this candle: keep working
        fee = (qty * price * fee_rate).quantize(FEE_QUANTUM)
        fill = self._book(order, qty, price, fee, c.ts, maker)
        updated = order.apply_fill(fill)
        if note and updated.status is not OrderStatus.FILLED:
            updated = updated.transition(OrderStatus.CANCELLED, c.ts, note)
        if updated.status.is_terminal:
            self._working.pop(order.client_order_id, None)
            self._triggered.discard(order.client_order_id)
        else:
            self._working[order.client_order_id] = updated
        return OrderUpdate(updated, (fill,), note)

    def _cancel_rest(self, order: Order, ts: int, note: str) -> OrderUpdate:
        self._working.pop(order.client_order_id, None)
        self._triggered.discard(order.client_order_id)
        return OrderUpdate(order.transition(OrderStatus.CANCELLED, ts, note), (), note)

    def _book(
        self, order: Order, qty: Decimal, price: Decimal, fee: Decimal, ts: int, maker: bool
    ) -> Fill:
        seq = self._fill_seq.get(order.client_order_id, 0) + 1
        self._fill_seq[order.client_order_id] = seq
        notional = qty * price
        if order.side is Side.BUY:
            self.cash -= notional + fee
            self.holdings[order.symbol] = self.holdings.get(order.symbol, ZERO) + qty
        else:
            self.cash += notional - fee
            self.holdings[order.symbol] = self.holdings.get(order.symbol, ZERO) - qty
        return Fill(
            fill_id=f"{order.client_order_id}:{seq}",
            client_order_id=order.client_order_id,
            account=order.account,
            symbol=order.symbol,
            side=order.side,
            quantity=qty,
            price=price,
            fee=fee,
            fee_currency=self.quote,
            ts=ts,
            liquidity="maker" if maker else "taker",
        )

    has_venue = False  # the paper broker's books are the venue: nothing to reconcile

    async def venue_state(
        self, symbols: Sequence[str]
    ) -> tuple[VenueState, list[OrderUpdate]] | None:
        return None

    @property
    def in_doubt(self) -> int:
        return 0  # a simulated fill is never in doubt

    async def close(self) -> None:
        return None


def static_markets(
    defaults: MarketSpec | None = None, overrides: Mapping[str, MarketSpec] | None = None
) -> MarketSource:
    """Market specs without an exchange (backtests): per-symbol overrides, else the defaults."""
    base = defaults or MarketSpec("*", "*", "*", min_notional=Decimal("5"))

    async def source(symbols: Sequence[str]) -> Mapping[str, MarketSpec]:
        out = {}
        for s in symbols:
            if overrides and s in overrides:
                out[s] = overrides[s]
            else:
                b, q = s.split("/")
                out[s] = dataclasses.replace(base, symbol=s, base=b, quote=q)
        return out

    return source
