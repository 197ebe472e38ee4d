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

Perpetuals (linear swaps, e.g. ``binanceusdm``):

- at start the account's margin mode and each symbol's leverage are set on the venue and the
  venue's answer checked (``MarginModeAlreadySet`` is the venue saying it already is);
- exits carry ``reduceOnly``; a stop is a conditional order, which Binance keeps in its algo
  service (ccxt routes it there): looked up and cancelled with ``trigger``, and once
  triggered its fills are those of the market order it placed (``actualOrderId``);
- reconciliation compares positions with ``fetch_positions`` and the wallet (not the margin
  balance) with the ledger's cash, and brings the venue's funding history
  (``fetch_funding_history``) since the newest payment the ledger holds.
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
    MarginMode,
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
    ConfigError,
    ExchangeError,
    OrderAction,
    OrderNotFound,
    VenueError,
)
from bot.exchange.errors import call
from bot.exchange.markets import ccxt_markets
from bot.exchange.retry import RetryPolicy, read, resync_clock
from bot.logs import get_logger
from risk.margin import MarginTerms

log = get_logger("broker.live")
_STATUS = {"open": OrderStatus.OPEN, "closed": OrderStatus.FILLED,
           "canceled": OrderStatus.CANCELLED, "cancelled": OrderStatus.CANCELLED,
           "expired": OrderStatus.CANCELLED, "rejected": OrderStatus.REJECTED}


def _dec(value: Any) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else ZERO


class LiveBroker:
    def __init__(self, exchange: Any, clock: Clock, quote: str, recv_window_ms: int = 5000,
                 policy: RetryPolicy | None = None, lookup_policy: RetryPolicy | None = None,
                 margin: MarginTerms | None = None, funding_since: int = 0) -> None:
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
        self.margin = margin or MarginTerms()
        self.funding_since = funding_since  # ms of the newest funding payment in the ledger
        self._specs: dict[str, MarketSpec] = {}

    async def markets(self, symbols: Sequence[str]) -> Mapping[str, MarketSpec]:
        specs = await read(self.exchange, lambda: ccxt_markets(self.exchange)(symbols),
                           "markets", self.policy)
        self._specs = dict(specs)
        for spec in specs.values():
            if spec.margined:
                await self._set_terms(spec)
        return specs

    async def _set_terms(self, spec: MarketSpec) -> None:
        """Margin mode and leverage on the venue, as configured; the venue's answer must say
        what was asked (a venue that capped the leverage would change every liquidation
        price the risk manager computed)."""
        mode = "isolated" if self.margin.mode is MarginMode.ISOLATED else "cross"
        try:
            await call(self.exchange.set_margin_mode(mode, spec.symbol))
        except VenueError as exc:
            if exc.ccxt_class != "MarginModeAlreadySet":
                raise
        wanted = int(self.margin.leverage_of(spec))
        answer = await call(self.exchange.set_leverage(wanted, spec.symbol))
        got = int(_dec((answer or {}).get("leverage")))
        if got != wanted:
            raise ConfigError(f"{spec.symbol}: the venue set leverage {got}, not the {wanted} "
                              "configured ([futures] leverage)")
        log.info("venue_terms", symbol=spec.symbol, leverage=wanted, margin_mode=mode)

    def _swap(self, symbol: str) -> bool:
        spec = self._specs.get(symbol)
        return spec is not None and spec.margined

    def _ref(self, order: Order) -> dict[str, Any]:
        """How ccxt finds the order at the venue: its client id, and for a perpetual's stop
        the algo service's own books."""
        ref: dict[str, Any] = {"origClientOrderId": order.client_order_id}
        if order.order_type is OrderType.STOP and self._swap(order.symbol):
            ref["trigger"] = True
        return ref

    def restore(
        self, orders: Sequence[Order], positions: Sequence[Position], cash: Decimal,
        funding_since: int = 0,
    ) -> None:
        # a new account (0): funding before its first start is in the balances the venue
        # hands over at the first reconciliation, so the venue's history starts now
        self.funding_since = max(self.funding_since, funding_since or self.clock.now_ms())
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
        if order.reduce_only and self._swap(order.symbol):
            params["reduceOnly"] = True  # an exit can never open or grow a position
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
                lambda: self.exchange.fetch_order(None, order.symbol, self._ref(order)),
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
        trades = await read(  # fetch_my_trades by order id: ccxt's fetch_order_trades is spot-only
            self.exchange,
            lambda: self.exchange.fetch_my_trades(order.symbol, None, None,
                                                  {"orderId": exchange_id}),
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
                    realized_pnl=(_dec(info["realizedPnl"]) if "realizedPnl" in info
                                  and self._swap(order.symbol) else None),
                )
            )
        return fills

    async def _placed(self, order: Order, raw: Mapping[str, Any]
                      ) -> tuple[Mapping[str, Any], str | None]:
        """For a conditional order of the algo service: the venue's view of the order it
        placed when triggered, and that order's id (its trades are booked against it); an
        untriggered one stands as it is. Any other order is its own."""
        info = raw.get("info") or {}
        if "algoId" not in info:
            return raw, None
        actual = str(info.get("actualOrderId") or "")
        if not actual:
            return dict(raw, filled=0), None
        placed = await read(self.exchange,
                            partial(self.exchange.fetch_order, actual, order.symbol),
                            "order", self.policy)
        return placed, actual

    async def _sync(self, order: Order, raw: Mapping[str, Any]) -> OrderUpdate:
        """Bring ``order`` up to the venue's ``raw`` view: its id, new trades, final state."""
        now = int(raw.get("lastUpdateTimestamp") or raw.get("timestamp") or self.clock.now_ms())
        updated = order
        if order.exchange_order_id is None and raw.get("id"):
            updated = dataclasses.replace(updated, exchange_order_id=str(raw["id"]))
        raw, trades_of = await self._placed(order, raw)
        if updated.status is OrderStatus.PENDING_SUBMIT:
            updated = updated.transition(OrderStatus.OPEN, now)
        venue_filled = _dec(raw.get("filled"))
        fills: list[Fill] = []
        if venue_filled > updated.filled_qty and updated.exchange_order_id:
            try:
                fills = await self._trades(updated, trades_of or updated.exchange_order_id)
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
                self.exchange.cancel_order(order.exchange_order_id, order.symbol,
                                           self._ref(order))
            )
            if raw.get("status") is None:  # the algo service answers {"code": 200}: ask
                raise ExchangeError("the cancel's answer has no order state")
        except ExchangeError as exc:
            # lost answer, refused, or already gone (filled, cancelled: -2011): ask what
            # happened
            log.info("cancel_unclear", client_order_id=cid, error=str(exc)[:200])
            raw = await read(
                self.exchange,
                lambda: self.exchange.fetch_order(
                    order.exchange_order_id, order.symbol, self._ref(order)
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
                                order.symbol, self._ref(order)),
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
        found on the way. Working orders (and a perpetuals account's funding history) are read
        before and after the snapshot; if a fill or a funding payment landed in between, the
        snapshot is taken again, so both sides describe one moment."""
        swaps = [s for s in symbols if self._swap(s)]
        updates = await self._poll(None)
        flows = await self._funding(swaps)
        for _ in range(3):
            balance = await read(
                self.exchange, lambda: self.exchange.fetch_balance(), "balance", self.policy
            )
            opened = []
            for sym in symbols:
                for ref in ({}, {"trigger": True}) if sym in swaps else ({},):
                    rows = await read(
                        self.exchange,
                        partial(self.exchange.fetch_open_orders, sym, None, None, ref),
                        "open_orders",
                        self.policy,
                    )
                    opened += [(str(r.get("clientOrderId") or ""), sym, str(r.get("id") or ""))
                               for r in rows]
            held = await self._positions(swaps) if swaps else None
            after = await self._poll(None)
            updates += after
            later = await self._funding(swaps)
            if not any(u.fills for u in after) and len(later) == len(flows):
                break
            flows = later
        tickers = await read(
            self.exchange,
            lambda: self.exchange.fetch_tickers(list(symbols)),
            "tickers",
            self.policy,
        )
        prices = {s: _dec(t.get("last")) for s, t in tickers.items() if t.get("last")}
        totals = {str(k): _dec(v) for k, v in (balance.get("total") or {}).items()}
        if swaps:  # the wallet: margin balance less unrealized P&L (ccxt's total is the former)
            for asset in (balance.get("info") or {}).get("assets") or []:
                totals[str(asset.get("asset"))] = _dec(asset.get("walletBalance"))
        positions = entries = liquidations = None
        if held is not None:
            positions = {s: q for s, (q, _, _) in held.items()}
            entries = {s: e for s, (_, e, _) in held.items()}
            liquidations = {s: lp for s, (_, _, lp) in held.items()}
        if flows:  # handed to the ledger now; a restart starts from what it committed
            self.funding_since = max(f.ts for f in flows)
        return VenueState(totals, tuple(opened), prices, positions, entries or {},
                          tuple(flows), liquidations or {}), updates

    async def _positions(self, swaps: Sequence[str]
                         ) -> dict[str, tuple[Decimal, Decimal, Decimal]]:
        """Signed contracts, entry price and the venue's liquidation price (0: none) of each
        held perpetual (one-way mode)."""
        rows = await read(self.exchange,
                          lambda: self.exchange.fetch_positions(list(swaps)), "positions",
                          self.policy)
        held: dict[str, tuple[Decimal, Decimal, Decimal]] = {}
        for r in rows:
            qty = _dec(r.get("contracts")) * _dec(r.get("contractSize") or 1)
            if qty and r.get("symbol") in swaps:
                sign = -1 if r.get("side") == "short" else 1
                held[str(r["symbol"])] = (sign * qty, _dec(r.get("entryPrice")),
                                          _dec(r.get("liquidationPrice")))
        return held

    async def _funding(self, swaps: Sequence[str]) -> list[CashFlow]:
        """Funding the venue booked after the newest payment the ledger holds, oldest first.
        Its transaction id is the flow's id, so a payment is never booked twice."""
        flows: list[CashFlow] = []
        for sym in swaps:
            rows = await read(
                self.exchange,
                partial(self.exchange.fetch_funding_history, sym, self.funding_since + 1),
                "funding", self.policy)
            for r in rows:
                ts = int(r.get("timestamp") or 0)
                if ts > self.funding_since and r.get("amount") is not None:
                    flows.append(CashFlow(f"funding:{r.get('id')}", "", sym, "funding",
                                          _dec((r.get("info") or {}).get("income")
                                               or r.get("amount")), ts))
        return sorted(flows, key=lambda f: (f.ts, f.flow_id))

    @property
    def in_doubt(self) -> int:
        """Orders whose outcome or fills the broker does not fully know yet."""
        return len(self._unresolved) + len(self._unbooked)

    async def close(self) -> None:
        return None
