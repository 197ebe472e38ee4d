"""The live broker: real orders through ccxt.

- Every order carries its deterministic client order id (``clientOrderId``).
- The engine commits the PENDING_SUBMIT row before ``submit`` is called.
- What a failed ``create_order`` means comes from the error policy (``bot/exchange/policy.py``):
  - outcome unknown (timeouts, resets, any 5XX with or without a body, Binance -1000, -1001,
    -1007, 429/418, an unclassified error): never resent; resolved by looking the order up
    by client id. "Not found" is only believed once the exchange's ``recvWindow`` has passed
    since the order could have been sent (after that the venue refuses the request), so a
    late-arriving order is never written off. Until then the order stays PENDING_SUBMIT and
    is looked up again on the next candle;
  - not placed (-1021, the timestamp was outside the recvWindow): the venue refused it before
    processing, so the clock is resynced and the same order sent once more under the same
    client id;
  - rejected (filters, bad parameters; insufficient funds, which also asks for a
    reconciliation): raised to the desk, which books the rejection;
  - fatal (keys, permissions, unknown symbol): raised; the run ends.
- Fills are booked from the venue's trades (exact price, quantity and commission per trade),
  never from an order's averages; a trade is booked once because fills are skipped by the
  cumulative quantity the ledger already holds.
- Reads retry by error class (``bot.exchange.retry``); ccxt errors are translated at the
  boundary (``bot.exchange.errors``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from functools import partial
from typing import Any

from bot.clock import Clock
from bot.domain import (
    ZERO,
    Candle,
    CashFlow,
    Fill,
    FundingRate,
    MarketSpec,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Position,
    VenueState,
)
from bot.errors import (
    ClockSkew,
    ExchangeError,
    OrderAction,
    OrderNotFound,
    VenueError,
)
from bot.exchange.errors import call
from bot.exchange.markets import ccxt_markets
from bot.exchange.retry import RetryPolicy, read, resync_clock
from bot.logs import get_logger

log = get_logger("broker.live")
_STATUS = {"open": OrderStatus.OPEN, "closed": OrderStatus.FILLED,
           "canceled": OrderStatus.CANCELLED, "cancelled": OrderStatus.CANCELLED,
           "expired": OrderStatus.CANCELLED, "rejected": OrderStatus.REJECTED}


def _dec(value: Any) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else ZERO


class LiveBroker:
    def __init__(self, exchange: Any, clock: Clock, quote: str, recv_window_ms: int = 5000,
                 policy: RetryPolicy | None = None, lookup_policy: RetryPolicy | None = None
                 ) -> None:
        self.exchange = exchange
        self.clock = clock
        self.quote = quote
        self.recv_window_ms = recv_window_ms
        self.policy = policy or RetryPolicy()
        self.lookup_policy = lookup_policy or RetryPolicy(attempts=3, base_s=0.2, cap_s=1.0)
        self._working: dict[str, Order] = {}
        # client id -> wall ms from which it may have reached the venue: outcome unknown
        self._unresolved: dict[str, int] = {}
        self._unbooked: set[str] = set()  # filled at the venue beyond the trades booked

    async def markets(self, symbols: Sequence[str]) -> Mapping[str, MarketSpec]:
        return await read(self.exchange, lambda: ccxt_markets(self.exchange)(symbols), "markets",
                          self.policy)

    def restore(
        self, orders: Sequence[Order], positions: Sequence[Position], cash: Decimal
    ) -> None:
        for o in orders:
            self._working[o.client_order_id] = o
            if o.status is OrderStatus.PENDING_SUBMIT:
                self._unresolved[o.client_order_id] = o.created_ts  # may have gone out since

    # ---- orders ---------------------------------------------------------------------------
    async def submit(self, order: Order) -> OrderUpdate:
        cid = order.client_order_id
        if cid in self._unresolved:  # we may have sent it before: ask, never resend blindly
            return await self._resolve(order)
        self._working[cid] = order
        params: dict[str, Any] = {"clientOrderId": cid}
        price = order.limit_price if order.order_type is OrderType.LIMIT else None
        if order.order_type is OrderType.STOP:
            # ccxt's unified stop: a market order with a trigger price (Binance: STOP_LOSS)
            params["triggerPrice"] = float(order.stop_price)  # type: ignore[arg-type]
        ccxt_type = "limit" if order.order_type is OrderType.LIMIT else "market"
        for attempt in range(2):
            self._unresolved[cid] = int(time.time() * 1000)
            try:
                raw = await call(
                    self.exchange.create_order(
                        order.symbol,
                        ccxt_type,
                        order.side.value,
                        float(order.quantity),
                        float(price) if price is not None else None,
                        params,
                    )
                )
            except VenueError as exc:  # both branches: a fatal refusal still forgets the id
                action = exc.order
                if action in (
                    OrderAction.FATAL,
                    OrderAction.REJECTED,
                    OrderAction.REJECTED_RECONCILE,
                ):
                    self._forget(cid)  # definitive: it was not placed
                    raise
                if action is OrderAction.RESEND:
                    if attempt == 0:  # refused for its timestamp before processing
                        log.warning("submit_clock_skew", client_order_id=cid, error=str(exc)[:200])
                        await resync_clock(self.exchange)
                        continue
                    self._forget(cid)
                    raise ClockSkew(
                        f"refused twice for its timestamp after a clock resync: {exc}"
                    ) from exc
                log.warning(
                    "submit_ambiguous",
                    client_order_id=cid,
                    error=str(exc)[:300],
                    ccxt_class=exc.ccxt_class,
                    kind=type(exc).__name__,
                )
                return await self._resolve(order)
            break
        self._unresolved.pop(cid, None)
        return await self._sync(order, raw)

    async def _resolve(self, order: Order) -> OrderUpdate:
        """The venue's view of an order whose submission is in doubt."""
        cid = order.client_order_id
        self._working[cid] = order
        try:
            raw = await read(
                self.exchange,
                lambda: self.exchange.fetch_order(None, order.symbol, {"origClientOrderId": cid}),
                "lookup",
                self.lookup_policy,
            )
        except OrderNotFound:
            may_arrive_until = self._unresolved.get(cid, 0) + self.recv_window_ms + 1000
            if time.time() * 1000 < may_arrive_until:
                return OrderUpdate(order, note="outcome unknown: will look it up again")
            self._forget(cid)
            return OrderUpdate(
                order.transition(
                    OrderStatus.REJECTED,
                    self.clock.now_ms(),
                    f"the venue never received it (not found {self.recv_window_ms} ms past its "
                    "recvWindow)",
                )
            )
        except ExchangeError as exc:
            log.warning("lookup_failed", client_order_id=cid, error=str(exc)[:300])
            return OrderUpdate(order, note="outcome unknown: will look it up again")
        self._unresolved.pop(cid, None)
        return await self._sync(order, raw)

    def _forget(self, cid: str) -> None:
        self._working.pop(cid, None)
        self._unresolved.pop(cid, None)

    async def _trades(self, order: Order, exchange_id: str) -> list[Fill]:
        """The order's trades the ledger has not booked yet, oldest first."""
        trades = await read(
            self.exchange,
            lambda: self.exchange.fetch_order_trades(exchange_id, order.symbol),
            "order_trades",
            self.policy,
        )
        trades = sorted(trades, key=lambda t: (t.get("timestamp") or 0, str(t.get("id"))))
        fills, cum = [], ZERO
        for t in trades:
            info = t.get("info") or {}
            qty = _dec(info.get("qty") or t.get("amount"))
            cum += qty
            if cum <= order.filled_qty:
                continue  # booked already
            fee = t.get("fee") or {}
            fills.append(
                Fill(
                    fill_id=f"{order.client_order_id}:t{t.get('id')}",
                    client_order_id=order.client_order_id,
                    account=order.account,
                    symbol=order.symbol,
                    side=order.side,
                    quantity=qty,
                    price=_dec(info.get("price") or t.get("price")),
                    fee=_dec(info.get("commission") or fee.get("cost")),
                    fee_currency=str(
                        info.get("commissionAsset") or fee.get("currency") or self.quote
                    ),
                    ts=int(t.get("timestamp") or self.clock.now_ms()),
                )
            )
        return fills

    async def _sync(self, order: Order, raw: Mapping[str, Any]) -> OrderUpdate:
        """Bring ``order`` up to the venue's ``raw`` view: its id, new trades, final state."""
        now = int(raw.get("lastUpdateTimestamp") or raw.get("timestamp") or self.clock.now_ms())
        updated = order
        if order.exchange_order_id is None and raw.get("id"):
            updated = dataclasses.replace(updated, exchange_order_id=str(raw["id"]))
        if updated.status is OrderStatus.PENDING_SUBMIT:
            updated = updated.transition(OrderStatus.OPEN, now)
        venue_filled = _dec(raw.get("filled"))
        fills: list[Fill] = []
        if venue_filled > updated.filled_qty and updated.exchange_order_id:
            try:
                fills = await self._trades(updated, updated.exchange_order_id)
            except ExchangeError as exc:  # booked on a later poll; the order stays working
                log.warning(
                    "trades_unavailable",
                    client_order_id=order.client_order_id,
                    error=str(exc)[:300],
                )
        for f in fills:
            updated = updated.apply_fill(f)
        target = _STATUS.get(str(raw.get("status")), OrderStatus.OPEN)
        all_booked = updated.filled_qty >= venue_filled
        if (
            target in (OrderStatus.CANCELLED, OrderStatus.REJECTED)
            and all_booked
            and not updated.status.is_terminal
        ):
            if target is OrderStatus.REJECTED and updated.status is not OrderStatus.OPEN:
                target = OrderStatus.CANCELLED
            updated = updated.transition(target, now, f"venue: {raw.get('status')}")
        (self._unbooked.discard if all_booked else self._unbooked.add)(order.client_order_id)
        if updated.status.is_terminal:
            self._working.pop(order.client_order_id, None)
        else:
            self._working[order.client_order_id] = updated
        return OrderUpdate(updated, tuple(fills))

    async def cancel(self, order: Order) -> OrderUpdate:
        cid = order.client_order_id
        current = self._working.get(cid, order)
        try:
            raw = await call(
                self.exchange.cancel_order(
                    order.exchange_order_id, order.symbol, {"origClientOrderId": cid}
                )
            )
        except ExchangeError as exc:
            # lost answer, refused, or already gone (filled, cancelled: -2011): ask what
            # happened
            log.info("cancel_unclear", client_order_id=cid, error=str(exc)[:200])
            raw = await read(
                self.exchange,
                lambda: self.exchange.fetch_order(
                    order.exchange_order_id, order.symbol, {"origClientOrderId": cid}
                ),
                "lookup",
                self.lookup_policy,
            )
        return await self._sync(current, raw)

    async def on_candle(self, candle: Candle) -> list[OrderUpdate]:
        """Poll the venue for the symbol's working orders (fills, cancels, doubts)."""
        return await self._poll(candle.symbol)

    async def _poll(self, symbol: str | None) -> list[OrderUpdate]:
        updates = []
        for cid, order in list(self._working.items()):
            if symbol is not None and order.symbol != symbol:
                continue
            try:
                if cid in self._unresolved:
                    update = await self._resolve(order)
                else:
                    raw = await read(
                        self.exchange,
                        partial(self.exchange.fetch_order, order.exchange_order_id,
                                order.symbol, {"origClientOrderId": cid}),
                        "order",
                        self.policy,
                    )
                    update = await self._sync(order, raw)
            except ExchangeError as exc:  # this order waits for the next poll; others go on
                log.warning("poll_failed", client_order_id=cid, error=str(exc)[:300])
                continue
            if update.fills or update.order.status is not order.status:
                updates.append(update)
        return updates

    # ---- reconciliation -------------------------------------------------------------------
    async def on_funding(self, funding: FundingRate) -> list[CashFlow]:
        return []  # the venue books funding itself

    has_venue = True  # a real venue whose books can disagree with ours

    async def venue_state(
        self, symbols: Sequence[str]
    ) -> tuple[VenueState, list[OrderUpdate]] | None:
        """Balances, open orders and prices as the venue sees them, plus the order updates
        found on the way. Working orders are polled before and after the snapshot; if a fill
        landed in between, the snapshot is taken again, so both sides describe one moment."""
        updates = await self._poll(None)
        for _ in range(3):
            balance = await read(
                self.exchange, lambda: self.exchange.fetch_balance(), "balance", self.policy
            )
            opened = []
            for sym in symbols:
                rows = await read(
                    self.exchange,
                    partial(self.exchange.fetch_open_orders, sym),
                    "open_orders",
                    self.policy,
                )
                opened += [
                    (str(r.get("clientOrderId") or ""), sym, str(r.get("id") or "")) for r in rows
                ]
            after = await self._poll(None)
            updates += after
            if not any(u.fills for u in after):
                break
        tickers = await read(
            self.exchange,
            lambda: self.exchange.fetch_tickers(list(symbols)),
            "tickers",
            self.policy,
        )
        prices = {s: _dec(t.get("last")) for s, t in tickers.items() if t.get("last")}
        totals = {str(k): _dec(v) for k, v in (balance.get("total") or {}).items()}
        return VenueState(totals, tuple(opened), prices), updates

    @property
    def in_doubt(self) -> int:
        """Orders whose outcome or fills the broker does not fully know yet."""
        return len(self._unresolved) + len(self._unbooked)

    async def close(self) -> None:
        return None
