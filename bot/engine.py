"""The engine: one closed candle batch at a time, the same code in backtest, paper and live.

Where a signal becomes an order: ``Engine._act``. The spine is

    signal -> strategy.decide -> risk.review -> ledger.commit(intent) -> broker.submit

The engine knows no mode. What differs between modes is only what ``bot/app.py`` plugs into the
ports: the feed, the clock, the broker and how the ledger commits.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bot.clock import Clock
from bot.domain import (
    AuditEvent, Candle, EquitySnapshot, Gap, MarketSpec, Order, OrderIntent, OrderStatus, Warmup,
)
from bot.errors import ExchangeError, LedgerError
from bot.logs import get_logger
from bot.metrics import RunStats
from bot.portfolio import Portfolio
from bot.ports import Broker, Feed, Ledger, OrderUpdate, RiskGate, SignalSource, Strategy, UnitOfWork

log = get_logger("engine")


def client_order_id(account: str, symbol: str, signal_ts: int, side: str) -> str:
    """Deterministic: the same decision always gets the same id, so a retry or a restart can
    never create a second order for it (Binance allows 36 characters)."""
    digest = hashlib.sha256(f"{account}|{symbol}|{signal_ts}|{side}".encode()).hexdigest()
    return f"sb{digest[:30]}"


@dataclass(frozen=True, slots=True)
class EngineParts:
    feed: Feed
    source: SignalSource
    strategy: Strategy
    risk: RiskGate
    broker: Broker
    ledger: Ledger
    clock: Clock


class Engine:
    def __init__(self, run_id: str, account: str, parts: EngineParts, portfolio: Portfolio,
                 markets: Mapping[str, MarketSpec], stats: RunStats,
                 max_candles: int | None = None) -> None:
        self.run_id, self.account = run_id, account
        self.p = parts
        self.portfolio = portfolio
        self.markets = markets
        self.stats = stats
        self.max_candles = max_candles
        self._stop = asyncio.Event()
        self._backlog = UnitOfWork()  # changes the ledger has not taken yet
        self.ledger_ok = True

    # ---- lifecycle ----------------------------------------------------------------------
    async def restore(self) -> None:
        """Carry on from the ledger: balances, positions, working orders, last candle."""
        state = await self.p.ledger.load_account(self.account)
        if state.cash is not None:
            self.portfolio._cash = state.cash
        self.portfolio.restore(state.positions, state.working_orders)
        self.p.broker.restore(state.working_orders, state.positions, self.portfolio.cash)
        self.p.feed.resume_after(dict(state.cursors))
        unit = UnitOfWork()
        for order in state.working_orders:
            if order.status is OrderStatus.PENDING_SUBMIT:
                # committed but maybe never sent: the broker resolves it by client id
                self._apply(await self._send(order), unit)
        await self._commit(unit)
        log.info("restored", account=self.account, cash=str(self.portfolio.cash),
                 positions=len(state.positions), working_orders=len(state.working_orders))

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        stream = self.p.feed.stream().__aiter__()
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                nxt = asyncio.ensure_future(stream.__anext__())
                done, _ = await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    break
                try:
                    event = nxt.result()
                except StopAsyncIteration:
                    break
                if isinstance(event, Gap):
                    self.on_gap(event)
                    continue
                if isinstance(event, Warmup):
                    await self.p.source.on_candles(event.candles)
                    for c in event.candles:
                        self.portfolio.mark(c)
                    continue
                await self.on_candles(event)
                if self.max_candles is not None and self.stats.candles >= self.max_candles:
                    break
        finally:
            stop.cancel()
            await self._commit(UnitOfWork())
            await self.p.ledger.flush()

    # ---- one step -----------------------------------------------------------------------
    def on_gap(self, gap: Gap) -> None:
        self.stats.gaps += 1
        self.stats.missing_candles += gap.missing
        self.p.source.on_gap(gap)
        self._backlog.audit.append(self._event("feed.gap", "symbol", gap.symbol, gap.next_ts, {
            "after_ts": gap.after_ts, "next_ts": gap.next_ts, "missing": gap.missing}))
        log.warning("gap", symbol=gap.symbol, missing=gap.missing, next_ts=gap.next_ts)

    async def on_candles(self, candles: Sequence[Candle]) -> None:
        unit = UnitOfWork()
        for c in candles:
            for update in await self._venue(self.p.broker.on_candle(c)):
                self._apply(update, unit)
            self.portfolio.mark(c)
            unit.cursors[(self.account, c.symbol)] = c.ts
        self.stats.candles += len(candles)
        signals = await self.p.source.on_candles(candles)
        self.stats.signals += len(signals)
        for signal in signals:
            unit.signals.append((self.run_id, self.account, signal))
            intent = self.p.strategy.decide(signal, self.portfolio)
            if intent is not None:
                unit = await self._act(intent, unit)
        close_ts = candles[0].close_ts
        pv = self.portfolio.positions_value()
        unit.equity.append(EquitySnapshot(self.account, self.run_id, close_ts,
                                          self.portfolio.cash, pv))
        self.stats.on_step(close_ts, self.portfolio.cash + pv, pv != 0)
        await self._commit(unit)

    async def _act(self, intent: OrderIntent, unit: UnitOfWork) -> UnitOfWork:
        """Where a signal becomes an order. Returns the unit to keep filling."""
        now = self.p.clock.now_ms()
        decision = self.p.risk.review(intent, self.portfolio, self.markets[intent.symbol])
        kind = "risk.approved" if decision.approved else "risk.rejected"
        unit.audit.append(self._event(kind, "intent", f"{intent.symbol}@{intent.signal_ts}", now, {
            "side": intent.side.value, "quantity": str(decision.quantity),
            "reason": decision.reason, "intent": intent.reason,
            "confidence": intent.confidence, "model_version": intent.model_version}))
        if not decision.approved:
            self.stats.rejected += 1
            return unit
        if not self.ledger_ok:
            unit.audit.append(self._event("order.skipped", "intent", intent.symbol, now,
                                          {"reason": "ledger unavailable: cannot audit"}))
            return unit
        order = Order(
            client_order_id=client_order_id(self.account, intent.symbol, intent.signal_ts,
                                            intent.side.value),
            account=self.account, run_id=self.run_id, symbol=intent.symbol, side=intent.side,
            order_type=intent.order_type, quantity=decision.quantity,
            status=OrderStatus.PENDING_SUBMIT, created_ts=now, updated_ts=now,
            signal_ts=intent.signal_ts, model_version=intent.model_version, reason=intent.reason,
            limit_price=intent.limit_price, stop_price=intent.stop_price,
            reduce_only=intent.reduce_only,
        )
        self._record_order(order, unit, "order.created")
        self.stats.orders += 1
        # The intent is committed before anything is sent (group-committing ledgers excepted).
        if not await self._commit(unit):
            self._record_order(order.transition(OrderStatus.CANCELLED, now,
                                                "ledger unavailable at submit"),
                               self._backlog, "order.cancelled")
            return UnitOfWork()
        unit = UnitOfWork()
        self._apply(await self._send(order), unit)
        return unit

    async def _send(self, order: Order) -> OrderUpdate:
        try:
            return await self.p.broker.submit(order)
        except ExchangeError as exc:
            # the live broker resolves ambiguous outcomes itself; what reaches here is final
            return OrderUpdate(order.transition(OrderStatus.REJECTED, self.p.clock.now_ms(),
                                                f"{type(exc).__name__}: {exc}"))

    async def _venue(self, call: object) -> list[OrderUpdate]:
        try:
            return await call  # type: ignore[misc,no-any-return]
        except ExchangeError as exc:
            log.warning("venue_error", error=str(exc), kind=type(exc).__name__)
            return []

    def _apply(self, update: OrderUpdate, unit: UnitOfWork) -> None:
        for fill in update.fills:
            pos = self.portfolio.apply_fill(fill)
            self.stats.on_fill(fill)
            unit.fills.append(fill)
            unit.positions[(self.account, fill.symbol)] = pos
            unit.cash[self.account] = (self.portfolio.cash, fill.ts)
            unit.audit.append(self._event("fill.booked", "order", fill.client_order_id, fill.ts, {
                "fill_id": fill.fill_id, "side": fill.side.value, "quantity": str(fill.quantity),
                "price": str(fill.price), "fee": str(fill.fee), "fee_currency": fill.fee_currency}))
            unit.audit.append(self._event("position.changed", "position", fill.symbol, fill.ts, {
                "quantity": str(pos.quantity), "avg_price": str(pos.avg_price),
                "realized_pnl": str(pos.realized_pnl), "cash": str(self.portfolio.cash)}))
        self._record_order(update.order, unit, f"order.{update.order.status.value}", update.note)

    def _record_order(self, order: Order, unit: UnitOfWork, kind: str, note: str = "") -> None:
        if order.status is OrderStatus.REJECTED:
            self.stats.rejected += 1
        self.portfolio.track(order)
        unit.orders[order.client_order_id] = order
        payload = {"status": order.status.value, "symbol": order.symbol,
                   "side": order.side.value, "quantity": str(order.quantity),
                   "filled": str(order.filled_qty), "reason": order.status_reason or order.reason}
        if note:
            payload["note"] = note
        unit.audit.append(self._event(kind, "order", order.client_order_id, order.updated_ts,
                                      payload))

    def _event(self, kind: str, entity: str, entity_id: str, ts: int,
               payload: dict[str, object]) -> AuditEvent:
        return AuditEvent(kind, entity, entity_id, self.account, self.run_id, ts, payload)

    async def _commit(self, unit: UnitOfWork) -> bool:
        """Commit the backlog and ``unit`` together. False (and keep both) if the ledger is
        down: the engine then opens nothing it could not audit, and retries next step."""
        if self._backlog:
            self._backlog.absorb(unit)
            unit = self._backlog
        if not unit:
            return True
        try:
            await self.p.ledger.commit(unit)
        except LedgerError as exc:
            if self.ledger_ok:
                log.error("ledger_down", error=str(exc))
            self.ledger_ok = False
            self._backlog = unit
            return False
        if unit is self._backlog:
            self._backlog = UnitOfWork()
        if not self.ledger_ok:
            log.info("ledger_back")
        self.ledger_ok = True
        return True
