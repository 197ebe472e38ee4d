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

Perpetuals (``MarketSpec.margined``): an order needs initial margin (notional / leverage)
out of the free margin, fills move cash by realized P&L and fees only, funding moves cash by
rate x notional at the mark (``on_funding``), and a position whose mark price crosses its
liquidation price (``risk/margin.py``) is closed there by the venue, which keeps what is left
of its margin (the insurance clearance fee).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal

from bot.clock import Clock
from bot.domain import (
    ZERO,
    Candle,
    CashFlow,
    Fill,
    FundingRate,
    InstrumentKind,
    MarkBar,
    MarketSpec,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Position,
    Side,
    VenueState,
)
from bot.portfolio import LastCloses, WorkingOrders, to_decimal
from risk.margin import (
    MarginTerms,
    initial_margin,
    maintenance_margin,
    position_liquidation,
)

MarketSource = Callable[[Sequence[str]], Awaitable[Mapping[str, MarketSpec]]]
BPS = Decimal("0.0001")
FEE_QUANTUM = Decimal("0.00000001")  # venues book fees to 8 decimals
# Binance USDT-M's regular-tier fees (https://www.binance.com/en/fee/futureFee)
SWAP_MAKER_FEE, SWAP_TAKER_FEE = Decimal("0.0002"), Decimal("0.0005")


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
        margin: MarginTerms | None = None,
    ) -> None:
        self._market_source = market_source
        self.margin = margin or MarginTerms()
        self.positions: dict[str, Position] = {}  # perpetuals: size, entry, realized P&L
        self._marks: dict[str, Decimal] = {}
        self._fresh: dict[str, Candle] = {}  # an entry filled in this candle, at its open
        self.liquidations = 0
        self._clock = clock
        self.quote = quote
        self.cash = starting_cash
        self.funding_since = 0  # funding at or before it is booked (restore sets it)
        self.holdings: dict[str, Decimal] = {}
        self._slip = slippage_bps * BPS
        self._participation = participation
        self._fee_rate = fee_rate
        self._specs: dict[str, MarketSpec] = {}
        self._working = WorkingOrders()  # client id -> order, in arrival order
        self._triggered: set[str] = set()  # stop orders that have triggered
        self._closes = LastCloses()
        self._fill_seq: dict[str, int] = {}

    async def markets(self, symbols: Sequence[str]) -> Mapping[str, MarketSpec]:
        specs = await self._market_source(symbols)
        self._specs.update(specs)
        return specs

    def restore(
        self, orders: Sequence[Order], positions: Sequence[Position], cash: Decimal,
        funding_since: int = 0,
    ) -> None:
        self.funding_since = funding_since  # funding at or before it is in the ledger already
        self.cash = cash
        self.holdings = {p.symbol: p.quantity for p in positions}
        self.positions = {p.symbol: p for p in positions}
        for o in orders:
            if o.status is OrderStatus.PENDING_SUBMIT:
                continue  # never reached this venue: the engine resubmits it
            self._working.put(o)
            self._fill_seq[o.client_order_id] = 0 if o.filled_qty == 0 else 1_000

    # ---- requests -----------------------------------------------------------------------
    async def submit(self, order: Order) -> OrderUpdate:
        now = self._clock.now_ms()
        if order.client_order_id in self._working:
            return OrderUpdate(self._working.get(order.client_order_id) or order,
                               note="duplicate client id")
        spec = self._specs.get(order.symbol)
        if spec is None:
            return OrderUpdate(order.transition(OrderStatus.REJECTED, now, "unknown symbol"))
        problem = self._problem(order, spec)
        if problem:
            return OrderUpdate(order.transition(OrderStatus.REJECTED, now, problem))
        acked = order.transition(OrderStatus.OPEN, now)
        self._working.put(acked)
        self._fill_seq.setdefault(order.client_order_id, 0)
        fresh = self._fresh.get(order.symbol)
        if fresh is not None and acked.is_protective and not self._liquidated_first(fresh,
                                                                                     acked):
            # live, this stop rests from seconds after the entry's fill: it sees the rest of
            # the candle the entry filled in
            update = self._match(acked, fresh)
            if update is not None:
                if self.positions[order.symbol].quantity == 0:
                    self._fresh.pop(order.symbol, None)
                return update
        return OrderUpdate(acked)

    def _fills_at_open(self, o: Order, c: Candle) -> bool:
        """A market order (or a triggered stop) from before this candle fills at its open."""
        return c.ts > o.signal_ts and (o.order_type is OrderType.MARKET
                                       or o.client_order_id in self._triggered)

    def _liquidated_first(self, c: Candle, stop: Order) -> bool:
        """Whether the mark reaches the liquidation price before the trade price reaches
        ``stop`` inside candle ``c`` (a price falls through the nearer level first)."""
        pos = self.positions.get(c.symbol)
        liq = self.liquidation_price(c.symbol)
        if pos is None or liq is None or stop.stop_price is None:
            return False
        bar = c.mark or _traded_bar(c)
        if pos.quantity > 0:
            return bar.low <= liq and (liq >= stop.stop_price or c.low > stop.stop_price)
        return bar.high >= liq and (liq <= stop.stop_price or c.high < stop.stop_price)

    async def cancel(self, order: Order) -> OrderUpdate:
        live = self._working.pop(order.client_order_id)
        now = self._clock.now_ms()
        if live is None:
            return OrderUpdate(order, note="not working at the venue")
        self._triggered.discard(order.client_order_id)
        return OrderUpdate(live.transition(OrderStatus.CANCELLED, now, "cancelled on request"))

    def _problem(self, order: Order, spec: MarketSpec) -> str | None:
        if order.quantity != spec.floor_qty(order.quantity):
            return f"quantity {order.quantity} is not a multiple of the step {spec.amount_step}"
        price = order.limit_price or order.stop_price or self._closes.get(order.symbol)
        if price is None:
            return None  # no reference yet: checked at fill time
        minimum = spec.minimum_problem(order.quantity, price)
        if minimum:
            return minimum
        if spec.margined:
            return self._margin_problem(order, spec, price)
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

    def _margin_problem(self, order: Order, spec: MarketSpec, price: Decimal) -> str | None:
        """Binance USDT-M: -2022 "ReduceOnly Order is rejected." and -2019 "Margin is
        insufficient." (the venue's texts)."""
        held = self.positions.get(order.symbol, Position("", order.symbol)).quantity
        reduces = held * order.side.sign < 0
        if order.reduce_only:
            resting = sum((o.remaining for o in self._working.of(order.symbol)
                           if o.reduce_only
                           and o.order_type is not OrderType.STOP), ZERO)
            if not reduces or order.quantity > abs(held) - resting:
                if order.order_type is OrderType.STOP and reduces \
                        and order.quantity <= abs(held):
                    return None  # a protective stop may cover the position beside an exit
                return "ReduceOnly Order is rejected."
            return None
        needed = initial_margin(order.quantity * price * spec.contract_size,
                                self.margin.leverage_of(spec, order.quantity * price))
        needed += order.quantity * price * self._fee(order, spec)
        free = self.free_margin()
        if needed > free:
            return f"Margin is insufficient. (needs {needed:.8f}, {free:.8f} free)"
        return None

    def free_margin(self) -> Decimal:
        """Wallet plus unrealized P&L, less the margin of positions and of working entries."""
        free = self.cash
        for sym, pos in self.positions.items():
            if pos.quantity == 0 or sym not in self._specs:
                continue
            spec = self._specs[sym]
            mark = self._marks.get(sym) or self._closes.get(sym) or pos.avg_price
            notional = abs(pos.quantity) * pos.avg_price * spec.contract_size
            free += pos.quantity * spec.contract_size * (mark - pos.avg_price)
            free -= initial_margin(notional, self.margin.leverage_of(spec, notional))
        for o in self._working.all():
            ospec = self._specs.get(o.symbol)
            if ospec is None or not ospec.margined or o.reduce_only:
                continue
            ref = o.limit_price or o.stop_price or self._closes.get(o.symbol) or ZERO
            free -= initial_margin(o.remaining * ref * ospec.contract_size,
                                   self.margin.leverage_of(ospec, o.remaining * ref))
        return free

    def liquidation_price(self, symbol: str) -> Decimal | None:
        """Where this venue liquidates the symbol's position (None: flat or spot)."""
        spec = self._specs.get(symbol)
        pos = self.positions.get(symbol)
        if spec is None or not spec.margined or pos is None or pos.quantity == 0:
            return None
        return position_liquidation(spec, self.margin, pos.quantity, pos.avg_price, self.cash)

    def _reserved_cash(self) -> Decimal:
        total = ZERO
        for o in self._working.all():
            if o.side is Side.BUY:
                ref = o.limit_price or o.stop_price or self._closes.get(o.symbol) or ZERO
                total += o.remaining * ref
        return total

    def _reserved_base(self, symbol: str) -> Decimal:
        return sum(
            (
                o.remaining
                for o in self._working.of(symbol)
                if o.side is Side.SELL
            ),
            ZERO,
        )

    def _fee(self, order: Order, spec: MarketSpec, maker: bool = False) -> Decimal:
        if self._fee_rate is not None:
            return self._fee_rate
        return spec.maker_fee if maker else spec.taker_fee

    # ---- the fill model -----------------------------------------------------------------
    async def on_candle(self, candle: Candle) -> list[OrderUpdate]:
        self._closes.update(candle.symbol, candle.close)
        updates: list[OrderUpdate] = []
        spec = self._specs.get(candle.symbol)
        margined = spec is not None and spec.margined
        held = ZERO
        if margined and spec is not None:
            fresh = self._fresh.pop(candle.symbol, None)
            if fresh is not None:
                updates += self._liquidate(fresh, spec)  # the check the entry's candle deferred
            held = self.positions.get(candle.symbol, Position("", candle.symbol)).quantity
        mine = self._working.of(candle.symbol) if held else []
        if margined and spec is not None and held and not any(
                self._fills_at_open(o, candle) for o in mine) and all(
                self._liquidated_first(candle, o) for o in mine if o.is_protective):
            # reached before any stop could fill; an order that fills at the open (an exit at
            # market) goes first
            updates += self._liquidate(candle, spec)
            held = self.positions[candle.symbol].quantity
        for listed in self._working.of(candle.symbol):
            order = self._working.get(listed.client_order_id)  # as an earlier fill left it
            if order is None or candle.ts <= order.signal_ts:
                continue  # decided on this candle's close or later: fills from the next one
            update = self._match(order, candle)
            if update is not None:
                updates.append(update)
        if margined and spec is not None:
            if candle.mark is not None:
                self._marks[candle.symbol] = to_decimal(candle.mark.close)
            now = self.positions.get(candle.symbol, Position("", candle.symbol)).quantity
            if abs(now) > abs(held) or now * held < 0:
                # an entry filled at this candle's open: its protective stop, placed right
                # after the fill, gets the rest of the candle first (``submit``)
                self._fresh[candle.symbol] = candle
            else:
                updates += self._liquidate(candle, spec)
        return updates

    def _liquidate(self, c: Candle, spec: MarketSpec) -> list[OrderUpdate]:
        """The mark crossed the liquidation price inside the candle: every working order of
        the symbol is cancelled and the position is closed at the liquidation price; the
        venue keeps the margin left at that price (its maintenance margin) as the insurance
        clearance fee, so the isolated margin is lost whole."""
        pos = self.positions.get(c.symbol)
        liq = self.liquidation_price(c.symbol)
        if pos is None or liq is None:
            return []
        bar = c.mark or _traded_bar(c)
        crossed = bar.low <= liq if pos.quantity > 0 else bar.high >= liq
        if not crossed:
            return []
        out = []
        for o in self._working.of(c.symbol):
            self._working.pop(o.client_order_id)
            self._triggered.discard(o.client_order_id)
            out.append(OrderUpdate(o.transition(OrderStatus.CANCELLED, c.ts,
                                                "cancelled by the venue's liquidation")))
        price = spec.round_price(liq)
        qty = abs(pos.quantity)
        fee = maintenance_margin(spec, qty, price).quantize(FEE_QUANTUM)
        side = Side.SELL if pos.quantity > 0 else Side.BUY
        order = Order(
            client_order_id="liq" + hashlib.sha256(
                f"{pos.account}|{c.symbol}|{c.ts}".encode()).hexdigest()[:29],
            account=pos.account, run_id="", symbol=c.symbol, side=side,
            order_type=OrderType.MARKET, quantity=qty, status=OrderStatus.OPEN,
            created_ts=c.ts, updated_ts=c.ts, signal_ts=c.ts, model_version="venue",
            reason=f"liquidation: mark crossed {liq:.8g}", reduce_only=True)
        fill = self._book(order, qty, price, fee, c.ts, False)
        self.liquidations += 1
        out.append(OrderUpdate(order.apply_fill(fill), (fill,),
                               f"liquidated at {price} (mark crossed the liquidation price)"))
        return out

    async def on_funding(self, funding: FundingRate) -> list[CashFlow]:
        """Binance USDT-M funding: position size x mark price x rate changes hands at the
        funding time; a positive rate means longs pay shorts. Booked to 8 decimals."""
        pos = self.positions.get(funding.symbol)
        spec = self._specs.get(funding.symbol)
        if funding.ts <= self.funding_since:
            return []  # booked before a restart
        if pos is None or pos.quantity == 0 or spec is None or not spec.margined:
            return []
        mark = (to_decimal(funding.mark) if funding.mark else None) or \
            self._marks.get(funding.symbol) or self._closes.get(funding.symbol)
        if mark is None:
            return []
        rate = to_decimal(funding.rate)
        notional = pos.quantity * spec.contract_size * mark
        amount = (-notional * rate).quantize(FEE_QUANTUM)
        self.cash += amount
        return [CashFlow(f"funding:{funding.symbol}:{funding.ts}", pos.account, funding.symbol,
                         "funding", amount, funding.ts, rate, mark, abs(notional))]

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
        if spec.margined:
            held = abs(self.positions.get(order.symbol, Position("", order.symbol)).quantity)
            if order.reduce_only and held < qty:
                qty, note = spec.floor_qty(held), "reduce-only beyond the position; rest cancelled"
        elif buy:
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
            self._working.pop(order.client_order_id)
            self._triggered.discard(order.client_order_id)
        else:
            self._working.put(updated)
        return OrderUpdate(updated, (fill,), note)

    def _cancel_rest(self, order: Order, ts: int, note: str) -> OrderUpdate:
        self._working.pop(order.client_order_id)
        self._triggered.discard(order.client_order_id)
        return OrderUpdate(order.transition(OrderStatus.CANCELLED, ts, note), (), note)

    def _book(
        self, order: Order, qty: Decimal, price: Decimal, fee: Decimal, ts: int, maker: bool
    ) -> Fill:
        seq = self._fill_seq.get(order.client_order_id, 0) + 1
        self._fill_seq[order.client_order_id] = seq
        notional = qty * price
        fill = Fill(
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
        if self._specs[order.symbol].margined:
            before = self.positions.get(order.symbol, Position(order.account, order.symbol))
            after = before.apply_fill(fill)
            self.cash += after.realized_pnl - before.realized_pnl - fee
            self.positions[order.symbol] = after
            self.holdings[order.symbol] = after.quantity
            return fill
        if order.side is Side.BUY:
            self.cash -= notional + fee
            self.holdings[order.symbol] = self.holdings.get(order.symbol, ZERO) + qty
        else:
            self.cash += notional - fee
            self.holdings[order.symbol] = self.holdings.get(order.symbol, ZERO) - qty
        return fill

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


def _traded_bar(c: Candle) -> MarkBar:
    """No mark price known: the traded bar stands in for it."""
    return MarkBar(c.open, c.high, c.low, c.close)


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
                b, rest = s.split("/")
                q, _, settle = rest.partition(":")
                if settle:  # a perpetual, ``BTC/USDT:USDT``: Binance USDT-M's fees
                    out[s] = dataclasses.replace(
                        base, symbol=s, base=b, quote=q, settle=settle,
                        kind=InstrumentKind.SWAP, maker_fee=SWAP_MAKER_FEE,
                        taker_fee=SWAP_TAKER_FEE)
                else:
                    out[s] = dataclasses.replace(base, symbol=s, base=b, quote=q)
        return out

    return source
