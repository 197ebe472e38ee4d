"""The order desk: sends, cancels and books orders for the engine, and writes each change with
its audit event into the unit of work. It decides nothing; the engine and risk do."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from bot.clock import Clock
from bot.domain import (
    AuditEvent,
    CashFlow,
    Order,
    OrderIntent,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Position,
    Side,
    UnitOfWork,
    evolve,
)
from bot.errors import ExchangeError, OrderAction
from bot.logs import get_logger, scrub
from bot.metrics import RunStats
from bot.portfolio import Portfolio
from bot.ports import Broker

log = get_logger("desk")


def client_order_id(account: str, symbol: str, signal_ts: int, side: str) -> str:
    """Deterministic: the same decision always gets the same id, so a retry or a restart can
    never create a second order for it (Binance allows 36 characters)."""
    digest = hashlib.sha256(f"{account}|{symbol}|{signal_ts}|{side}".encode()).hexdigest()
    return f"sb{digest[:30]}"


class OrderDesk:
    def __init__(self, run_id: str, account: str, broker: Broker, portfolio: Portfolio,
                 clock: Clock, stats: RunStats) -> None:
        self.run_id, self.account = run_id, account
        self.broker, self.portfolio, self.clock, self.stats = broker, portfolio, clock, stats
        self.on_fill: Any = None  # callback(fill, before, after, order) set by the engine
        # callback(ok, ccxt class or None) for the exchange-error breaker and the metrics
        self.on_venue_call: Any = None
        self.reconcile_wanted = False  # a venue answer says ledger and venue may disagree
        # a perpetual position's liquidation price (risk/margin.py), set by the engine
        self.liquidation_of: Callable[[Position], Decimal | None] = lambda pos: None
        self._stops_ts, self._stops_seen = -1, dict[tuple[str, str], int]()

    def stop_tag(self, symbol: str, ts: int, price: object) -> str:
        """The tag of a protective stop placed at step ``ts``: unique within the step. A stop
        cancelled and placed again at the same price in one step (an exit that the venue
        refused puts it back) would otherwise get the cancelled order's client id, which the
        ledger keeps as cancelled (a finished order is never rewritten) while the venue works
        the new one."""
        if ts != self._stops_ts:
            self._stops_ts, self._stops_seen = ts, {}
        tag = f"stop{price}"
        n = self._stops_seen.get((symbol, tag), 0)
        self._stops_seen[(symbol, tag)] = n + 1
        return f"{tag}#{n}" if n else tag

    def event(self, kind: str, entity: str, entity_id: str, ts: int,
              payload: dict[str, object]) -> AuditEvent:
        return AuditEvent(kind, entity, entity_id, self.account, self.run_id, ts, payload)

    def new_order(self, intent: OrderIntent, quantity: Decimal, tag: str = "") -> Order:
        now = self.clock.now_ms()
        side = intent.side.value + (f":{tag}" if tag else "")
        return Order(
            client_order_id=client_order_id(self.account, intent.symbol, intent.signal_ts, side),
            account=self.account, run_id=self.run_id, symbol=intent.symbol, side=intent.side,
            order_type=intent.order_type, quantity=quantity, status=OrderStatus.PENDING_SUBMIT,
            created_ts=now, updated_ts=now, signal_ts=intent.signal_ts,
            model_version=intent.model_version, reason=intent.reason,
            limit_price=intent.limit_price, stop_price=intent.stop_price,
            reduce_only=intent.reduce_only,
        )

    async def venue(self, call: Awaitable[Any], default: Any) -> Any:
        """Await a broker call; exchange errors are logged, counted and give ``default``."""
        try:
            result = await call
        except ExchangeError as exc:
            log.warning("venue_error", error=scrub(str(exc)), kind=type(exc).__name__,
                        ccxt_class=exc.ccxt_class)
            if self.on_venue_call:
                self.on_venue_call(False, exc.ccxt_class or type(exc).__name__)
            return default
        if self.on_venue_call:
            self.on_venue_call(True, None)
        return result

    async def send(self, order: Order) -> OrderUpdate:
        try:
            update = await self.broker.submit(order)
        except ExchangeError as exc:
            if self.on_venue_call:
                self.on_venue_call(False, exc.ccxt_class or type(exc).__name__)
            if exc.order is OrderAction.REJECTED_RECONCILE:
                self.reconcile_wanted = True
            # the live broker resolves ambiguous outcomes itself; what reaches here is final
            # the venue's text is stored with the order: no secret may ride along in it
            return OrderUpdate(order.transition(OrderStatus.REJECTED, self.clock.now_ms(),
                                                scrub(f"{type(exc).__name__}: {exc}")))
        if self.on_venue_call:
            self.on_venue_call(True, None)
        return update

    async def cancel(self, order: Order, unit: UnitOfWork, why: str) -> bool:
        update = await self.venue(self.broker.cancel(order), None)
        if update is None:
            return False
        self.apply(update, unit, note=why)
        return update.order.status.is_terminal

    async def cancel_where(self, unit: UnitOfWork, why: str, symbol: str | None = None,
                           protective_only: bool = False) -> int:
        n = 0
        for o in list(self.portfolio.working_orders(symbol)):
            if protective_only and not o.is_protective:
                continue
            if o.status is OrderStatus.PENDING_SUBMIT:
                continue  # unknown at the venue yet; the broker resolves it first
            n += await self.cancel(o, unit, why)
        return n

    def apply(self, update: OrderUpdate, unit: UnitOfWork, note: str = "") -> None:
        if not update.order.run_id:  # an order the venue made (a liquidation) joins this run
            update = evolve(update, order=evolve(
                update.order, run_id=self.run_id, account=self.account))
            if update.fills:
                self.stats.liquidations += 1
                self.stats.orders += 1
        for fill in update.fills:
            before = self.portfolio.position(fill.symbol)
            pos = self.portfolio.apply_fill(fill)
            if fill.symbol in self.portfolio.margined:
                pos = self.portfolio.set_liquidation(fill.symbol, self.liquidation_of(pos))
            self.stats.on_fill(fill)
            unit.fills.append(fill)
            unit.positions[(self.account, fill.symbol)] = pos
            unit.cash[self.account] = (self.portfolio.cash, fill.ts)
            unit.audit.append(self.event("fill.booked", "order", fill.client_order_id, fill.ts, {
                "fill_id": fill.fill_id, "side": fill.side.value, "quantity": str(fill.quantity),
                "price": str(fill.price), "fee": str(fill.fee), "fee_currency": fill.fee_currency}))
            changed: dict[str, object] = {
                "quantity": str(pos.quantity), "avg_price": str(pos.avg_price),
                "realized_pnl": str(pos.realized_pnl), "cash": str(self.portfolio.cash)}
            if pos.liquidation_price is not None:
                changed["liquidation_price"] = str(pos.liquidation_price)
            unit.audit.append(self.event("position.changed", "position", fill.symbol, fill.ts,
                                         changed))
            if self.on_fill:
                self.on_fill(fill, before, pos, update.order)
        self.record(update.order, unit, f"order.{update.order.status.value}",
                    update.note or note)

    def book_flows(self, flows: list[CashFlow], unit: UnitOfWork) -> None:
        """Funding: cash moves, the flow row and its audit event go in the same unit."""
        for flow in flows:
            flow = evolve(flow, account=self.account)
            self.portfolio.book_flow(flow)
            self.stats.on_flow(flow)
            unit.cash_flows.append(flow)
            unit.cash[self.account] = (self.portfolio.cash, flow.ts)
            unit.audit.append(self.event(f"{flow.kind}.booked", "position", flow.symbol,
                                         flow.ts, {
                "flow_id": flow.flow_id, "amount": str(flow.amount), "rate": str(flow.rate),
                "mark": str(flow.mark), "notional": str(flow.notional),
                "cash": str(self.portfolio.cash)}))

    def record(self, order: Order, unit: UnitOfWork, kind: str, note: str = "") -> None:
        if order.status is OrderStatus.REJECTED:
            self.stats.rejected += 1
        self.portfolio.track(order)
        unit.orders[order.client_order_id] = order
        payload: dict[str, object] = {
            "status": order.status.value, "symbol": order.symbol, "side": order.side.value,
            "type": order.order_type.value, "quantity": str(order.quantity),
            "filled": str(order.filled_qty), "reason": order.status_reason or order.reason}
        if order.stop_price is not None:
            payload["stop_price"] = str(order.stop_price)
        if note:
            payload["note"] = note
        unit.audit.append(self.event(kind, "order", order.client_order_id, order.updated_ts,
                                     payload))


def exit_intent(position: Position, signal_ts: int, reason: str, model_version: str,
                order_type: OrderType = OrderType.MARKET,
                stop: Decimal | None = None) -> OrderIntent:
    """A reduce-only order that closes ``position``: a sell for a long, a buy for a short."""
    return OrderIntent(
        symbol=position.symbol,
        side=Side.SELL if position.quantity > 0 else Side.BUY,
        reason=reason,
        signal_ts=signal_ts,
        model_version=model_version,
        order_type=order_type,
        reduce_only=True,
        quantity=abs(position.quantity),
        stop_price=stop,
    )
