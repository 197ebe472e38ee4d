"""The live broker: real orders through ccxt.

- Every order carries its deterministic client order id (``clientOrderId``).
- The engine commits the PENDING_SUBMIT row before ``submit`` is called.
- A timeout or network error on create is resolved by looking the order up by client id,
  never by sending it again. An order the venue does not know after that is REJECTED; one
  whose fate cannot be learned stays PENDING_SUBMIT and is looked up again on the next candle.
- ccxt errors are translated at the boundary (``bot.exchange.errors``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from bot.clock import Clock
from bot.domain import ZERO, Candle, Fill, MarketSpec, Order, OrderStatus, OrderType, Position
from bot.errors import ExchangeUnavailable, OrderNotFound
from bot.exchange.errors import call
from bot.exchange.markets import ccxt_markets
from bot.logs import get_logger
from bot.ports import OrderUpdate

log = get_logger("broker.live")
_STATUS = {"open": OrderStatus.OPEN, "closed": OrderStatus.FILLED,
           "canceled": OrderStatus.CANCELLED, "cancelled": OrderStatus.CANCELLED,
           "expired": OrderStatus.CANCELLED, "rejected": OrderStatus.REJECTED}


def _dec(value: Any) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else ZERO


class LiveBroker:
    def __init__(self, exchange: Any, clock: Clock, quote: str, lookup_attempts: int = 5) -> None:
        self.exchange = exchange
        self.clock = clock
        self.quote = quote
        self.lookup_attempts = lookup_attempts
        self._working: dict[str, Order] = {}
        self._recovered: set[str] = set()  # PENDING_SUBMIT orders inherited from a crash

    async def markets(self, symbols: Sequence[str]) -> Mapping[str, MarketSpec]:
        return await ccxt_markets(self.exchange)(symbols)

    def restore(self, orders: Sequence[Order], positions: Sequence[Position], cash: Decimal) -> None:
        for o in orders:
            self._working[o.client_order_id] = o
            if o.status is OrderStatus.PENDING_SUBMIT:
                self._recovered.add(o.client_order_id)

    async def submit(self, order: Order) -> OrderUpdate:
        cid = order.client_order_id
        if cid in self._recovered:
            # we may have sent it before dying: ask first, send only if the venue never saw it
            self._recovered.discard(cid)
            found = await self._lookup(order)
            if found is not None:
                return found
        self._working[cid] = order
        params: dict[str, Any] = {"clientOrderId": cid}
        price = order.limit_price if order.order_type is OrderType.LIMIT else None
        if order.order_type is OrderType.STOP:
            # ccxt's unified stop: a market order with a trigger price (Binance: STOP_LOSS)
            params["triggerPrice"] = float(order.stop_price)  # type: ignore[arg-type]
        ccxt_type = "limit" if order.order_type is OrderType.LIMIT else "market"
        try:
            raw = await call(self.exchange.create_order(
                order.symbol, ccxt_type, order.side.value, float(order.quantity),
                float(price) if price is not None else None, params))
        except ExchangeUnavailable as exc:
            log.warning("submit_ambiguous", client_order_id=cid, error=str(exc))
            found = await self._lookup(order)
            if found is not None:
                return found
            self._working.pop(cid, None)
            return OrderUpdate(order.transition(OrderStatus.REJECTED, self.clock.now_ms(),
                                                f"not at the venue after {exc}"))
        except Exception:
            self._working.pop(cid, None)
            raise
        return self._absorb(order, raw)

    async def _lookup(self, order: Order) -> OrderUpdate | None:
        """The venue's view of ``order`` by client id; None when it does not know it."""
        for attempt in range(self.lookup_attempts):
            try:
                raw = await call(self.exchange.fetch_order(
                    None, order.symbol, {"origClientOrderId": order.client_order_id}))
            except OrderNotFound:
                return None
            except ExchangeUnavailable as exc:
                await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))
                log.warning("lookup_retry", client_order_id=order.client_order_id, error=str(exc))
                continue
            self._working[order.client_order_id] = order
            return self._absorb(order, raw)
        # unknown fate: keep it pending and ask again on the next candle
        self._working[order.client_order_id] = order
        self._recovered.add(order.client_order_id)
        return OrderUpdate(order, note="outcome unknown: will look it up again")

    def _absorb(self, order: Order, raw: Mapping[str, Any]) -> OrderUpdate:
        """Turn a ccxt order into our state change plus the fills since we last looked."""
        now = int(raw.get("lastUpdateTimestamp") or raw.get("timestamp") or self.clock.now_ms())
        filled = _dec(raw.get("filled"))
        avg = _dec(raw.get("average") or raw.get("price"))
        fills: list[Fill] = []
        if filled > order.filled_qty:
            qty = filled - order.filled_qty
            price = (avg * filled - order.avg_fill_price * order.filled_qty) / qty
            fee_total = _dec((raw.get("fee") or {}).get("cost"))
            fee_ccy = (raw.get("fee") or {}).get("currency") or self.quote
            fills.append(Fill(
                fill_id=f"{order.client_order_id}:{filled}",  # unique per cumulative fill
                client_order_id=order.client_order_id, account=order.account,
                symbol=order.symbol, side=order.side, quantity=qty, price=price,
                fee=max(ZERO, fee_total - order.fees), fee_currency=fee_ccy, ts=now))
        updated = order
        if order.exchange_order_id is None and raw.get("id"):
            updated = dataclasses.replace(updated, exchange_order_id=str(raw["id"]))
        if updated.status is OrderStatus.PENDING_SUBMIT:
            updated = updated.transition(OrderStatus.OPEN, now)
        for f in fills:
            updated = updated.apply_fill(f)
        target = _STATUS.get(str(raw.get("status")), OrderStatus.OPEN)
        if target in (OrderStatus.CANCELLED, OrderStatus.REJECTED) and not updated.status.is_terminal:
            updated = updated.transition(target, now, f"venue: {raw.get('status')}")
        if updated.status.is_terminal:
            self._working.pop(order.client_order_id, None)
        else:
            self._working[order.client_order_id] = updated
        return OrderUpdate(updated, tuple(fills))

    async def cancel(self, order: Order) -> OrderUpdate:
        raw = await call(self.exchange.cancel_order(order.exchange_order_id, order.symbol,
                                                    {"origClientOrderId": order.client_order_id}))
        return self._absorb(self._working.get(order.client_order_id, order), raw)

    async def on_candle(self, candle: Candle) -> list[OrderUpdate]:
        """Poll the venue for the symbol's working orders (fills, cancels)."""
        updates = []
        for cid, order in list(self._working.items()):
            if order.symbol != candle.symbol:
                continue
            if cid in self._recovered:
                self._recovered.discard(cid)
                found = await self._lookup(order)
                if found is None:
                    found = OrderUpdate(order.transition(OrderStatus.REJECTED, self.clock.now_ms(),
                                                         "the venue never received it"))
                    self._working.pop(cid, None)
                updates.append(found)
                continue
            raw = await call(self.exchange.fetch_order(
                order.exchange_order_id, order.symbol, {"origClientOrderId": cid}))
            update = self._absorb(order, raw)
            if update.fills or update.order.status is not order.status:
                updates.append(update)
        return updates

    async def close(self) -> None:
        return None
