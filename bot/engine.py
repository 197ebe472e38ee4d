"""The engine: one closed candle batch at a time, the same code in backtest, paper and live.

Where a signal becomes an order: ``Engine.act``. The spine is

    signal -> strategy.decide -> risk.review -> ledger.commit(intent) -> broker.submit

The engine knows no mode. What differs between modes is only what ``bot/app.py`` plugs into the
ports: the feed, the clock, the broker and how the ledger commits. Operator commands (kill,
resume) from every channel arrive on one queue and are handled between candles.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bot.clock import Clock
from bot.desk import OrderDesk, client_order_id, exit_intent
from bot.domain import (
    Candle,
    ControlRequest,
    ControlResult,
    EquitySnapshot,
    FeedState,
    FeedStatus,
    Fill,
    FundingRate,
    Gap,
    MarketSpec,
    Order,
    OrderIntent,
    OrderStatus,
    OrderType,
    Position,
    Protect,
    Transition,
    UnitOfWork,
    Warmup,
)
from bot.errors import FatalExchangeError, LedgerError
from bot.logs import get_logger
from bot.metrics import RunStats
from bot.operator import OperatorControl
from bot.portfolio import Portfolio
from bot.ports import Broker, Feed, Ledger, NullObserver, Observer, SignalSource, Strategy
from bot.reconcile_driver import Reconciler
from bot.records import fatal_payload, transition_payload
from risk.manager import RiskManager
from risk.margin import position_liquidation

log = get_logger("engine")
_END = object()  # the feed is exhausted


@dataclass(frozen=True, slots=True)
class _Failed:
    error: Exception
__all__ = ["Engine", "EngineParts", "client_order_id"]


@dataclass(frozen=True, slots=True)
class EngineParts:
    feed: Feed
    source: SignalSource
    strategy: Strategy
    risk: RiskManager
    broker: Broker
    ledger: Ledger
    clock: Clock


class Engine:
    def __init__(self, run_id: str, account: str, parts: EngineParts, portfolio: Portfolio,
                 markets: Mapping[str, MarketSpec], stats: RunStats,
                 max_candles: int | None = None) -> None:
        self.run_id, self.account = run_id, account
        self.parts = parts
        self.risk = parts.risk
        self.portfolio = portfolio
        self.markets = markets
        self.stats = stats
        self.max_candles = max_candles
        self.desk = OrderDesk(run_id, account, parts.broker, portfolio, parts.clock, stats)
        self.desk.on_fill = self._on_fill
        self.desk.on_venue_call = self._on_venue_call
        self.desk.liquidation_of = self._liquidation_of
        self.controls: asyncio.Queue[
            tuple[ControlRequest, asyncio.Future[ControlResult] | None]] = asyncio.Queue()
        self.stopped = asyncio.Event()
        self._backlog = UnitOfWork()  # changes the ledger has not taken yet
        self._pending_protect: list[Protect] = []
        self.transitions: list[Transition] = []  # not yet audited
        self.operator = OperatorControl(self)
        self._entry_version: dict[str, str] = {}  # symbol -> model version of its entry
        self.ledger_ok = True
        self.wake = asyncio.Event()
        self.telemetry: Any = None  # callback(unit) after each successful commit
        self.observer: Observer = NullObserver()  # monitoring (Prometheus), after the fact
        self._nonces: set[str] = set()
        self._acks: dict[str, Any] = {}
        self.reconcile_every = 0  # candle steps between reconciliations with the venue
        self._steps = 0
        self._inference_s = 0.0
        self.reconciler = Reconciler(account, parts.broker, self.desk, portfolio, parts.risk,
                                     markets, parts.clock)

    # ---- lifecycle ----------------------------------------------------------------------
    async def restore(self) -> None:
        """Carry on from the ledger: balances, positions, working orders, risk state, last
        candle, and operator requests made while no instance ran."""
        state = await self.parts.ledger.load_account(self.account)
        # every breaker's window, levels and throttle, before the first decision
        self.risk.restore(state.risk_state, state.risk_memory)
        self.portfolio.restore(state.positions, state.working_orders, state.cash)
        self.parts.broker.restore(state.working_orders, state.positions, self.portfolio.cash,
                                  state.funding_since)
        self.parts.feed.resume_after(dict(state.cursors))
        unit = UnitOfWork()
        for order in state.working_orders:
            if order.status is OrderStatus.PENDING_SUBMIT:
                # committed but maybe never sent: the broker resolves it by client id
                self.desk.apply(await self.desk.send(order), unit)
        # an account that never saw a candle starts from the venue's balances
        first = not state.cursors and not state.positions and not state.working_orders
        await self.reconcile(unit, first_run=first, at_start=True)
        for request in state.pending_controls:  # carried out as in a step, after the above
            self.controls.put_nowait((request, None))
        await self.commit(await self.drain_controls(unit))
        self._nonces = set(state.recent_nonces)
        self._acks = dict(state.command_acks)
        log.info("restored", cash=str(self.portfolio.cash), positions=len(state.positions),
                 working_orders=len(state.working_orders),
                 trading_state=self.risk.machine.state.value)

    def request_stop(self) -> None:
        self.stopped.set()
        self.wake.set()

    def submit_control(self, request: ControlRequest) -> asyncio.Future[ControlResult]:
        """Any channel hands operator commands in here; the future gets the result."""
        fut: asyncio.Future[ControlResult] = asyncio.get_running_loop().create_future()
        self.controls.put_nowait((request, fut))
        self.wake.set()
        return fut

    on_started: Any = None  # async callback(engine, nonces, acks): services beside the loop

    async def run(self) -> None:
        """Feed events and operator commands, one at a time; commands go first."""
        if self.on_started is not None:
            await self.on_started(self, self._nonces, self._acks)
        # a few events of read-ahead; commands are still handled before the next event
        feed_q: asyncio.Queue[Any] = asyncio.Queue(maxsize=256)
        wake = self.wake = asyncio.Event()

        async def pump() -> None:
            end: object = _END
            try:
                async for event in self.parts.feed.stream():
                    await feed_q.put(event)
                    wake.set()
            except Exception as exc:  # handed to the loop, which raises it
                end = _Failed(exc)
            # (cancelled: nobody reads the queue any more, so nothing is put on it)
            await feed_q.put(end)
            wake.set()

        pumping = asyncio.create_task(pump())
        try:
            while not self.stopped.is_set():
                if not self.controls.empty():
                    await self.drain_controls()
                    continue
                if feed_q.empty():
                    wake.clear()
                    await wake.wait()
                    continue
                event = feed_q.get_nowait()
                if event is _END:
                    break
                if isinstance(event, _Failed):
                    raise event.error  # the feed broke: the run fails, loudly
                if isinstance(event, Gap):
                    self.on_gap(event)
                elif isinstance(event, FeedStatus):
                    await self.on_feed_status(event)
                elif isinstance(event, FundingRate):
                    await self.on_funding(event)
                elif isinstance(event, Warmup):
                    self.parts.source.warm(event.candles)
                    for c in event.candles:
                        self.portfolio.mark(c)
                else:
                    await self.on_candles(event)
                    if self.max_candles is not None and self.stats.candles >= self.max_candles:
                        break
        finally:
            # cancel until it takes: on Python 3.11 ``wait_for`` inside the feed can swallow a
            # cancellation that lands as its inner await completes
            while not pumping.done():
                pumping.cancel()
                await asyncio.wait({pumping}, timeout=0.2)
            await asyncio.gather(pumping, return_exceptions=True)
            await self.commit(UnitOfWork())
            await self.parts.ledger.flush()

    async def drain_controls(self, unit: UnitOfWork | None = None) -> UnitOfWork:
        """Operator commands first: also between the decisions of one candle step, so a kill
        takes effect within one order's time even while the engine is busy. ``unit``, what
        the step changed so far, commits first: each command commits its own changes, and
        the books must reach the ledger in the order they changed (a step's unit committed
        after a kill's flatten would write back the position and cash from before it).
        Returns the unit the step goes on filling."""
        if unit:
            await self.commit(unit)  # (the ledger down: held in the backlog, in order)
        while not self.controls.empty():
            request, fut = self.controls.get_nowait()
            result = await self.operator.carry_out_now(request)
            if fut is not None and not fut.done():
                fut.set_result(result)
        return UnitOfWork()

    # ---- one step -----------------------------------------------------------------------
    def on_gap(self, gap: Gap) -> None:
        self.stats.gaps += 1
        self.stats.missing_candles += gap.missing
        self.parts.source.on_gap(gap)
        self._backlog.audit.append(self.desk.event("feed.gap", "symbol", gap.symbol,
                                                   gap.next_ts, {"after_ts": gap.after_ts,
                                                                 "next_ts": gap.next_ts,
                                                                 "missing": gap.missing}))
        log.warning("gap", symbol=gap.symbol, missing=gap.missing, next_ts=gap.next_ts)

    async def on_feed_status(self, status: FeedStatus) -> None:
        """Fallback, websocket back, stale, fresh: audited (so published); a stale feed blocks
        entries through the stale-data breaker until it reports fresh data."""
        now, unit = self.parts.clock.now_ms(), UnitOfWork()
        unit.audit.append(self.desk.event(f"feed.{status.state.value}", "feed", status.source,
                                          now, {"source": status.source, "reason": status.reason,
                                                "failures": status.failures}))
        if status.state in (FeedState.STALE, FeedState.FRESH):
            self.transitions += self.risk.on_feed(now, status.state is FeedState.STALE,
                                                   status.reason)
            unit.risk_state[self.account] = (self.risk.machine.current, now)
        self.audit_transitions(unit)
        await self.commit(unit)

    async def on_funding(self, funding: FundingRate) -> None:
        """A perpetual's funding time: what the venue books moves the cash, audited."""
        unit = UnitOfWork()
        self.desk.book_flows(await self.desk.venue(self.parts.broker.on_funding(funding), []),
                             unit)
        await self.commit(unit)

    async def record_fatal(self, exc: FatalExchangeError) -> None:
        """A configuration or permission error ends the run: say why, and what to fix."""
        unit = UnitOfWork(audit=[self.desk.event("run.fatal", "account", self.account,
                                                 self.parts.clock.now_ms(), fatal_payload(exc))])
        await self.commit(unit)

    async def on_candles(self, candles: Sequence[Candle]) -> None:
        started = time.perf_counter()
        self._inference_s = 0.0
        await self._step(candles)
        lag = self.parts.clock.now_ms() - candles[0].close_ts
        self.observer.on_step(time.perf_counter() - started, self._inference_s, lag / 1000,
                              len(candles))
        self.observer.on_risk(self.risk.machine.state.value, self.risk.readings)

    async def _step(self, candles: Sequence[Candle]) -> None:
        self.parts.clock.observe(candles[0].close_ts)
        if self.stats.candles == 0:
            log.info("first_candle", ts=candles[0].ts, symbols=len(candles))
        unit = UnitOfWork()
        for c in candles:
            for update in await self.desk.venue(self.parts.broker.on_candle(c), []):
                self.desk.apply(update, unit)
            self.portfolio.mark(c)
            unit.cursors[(self.account, c.symbol)] = c.ts
        self._steps += 1
        if self.reconciler.awaiting_verdict or (self.reconcile_every and
                                      self._steps % self.reconcile_every == 0):
            await self.reconcile(unit)
        self.stats.candles += len(candles)
        t0 = time.perf_counter()
        signals = await self.parts.source.on_candles(candles)
        self._inference_s = time.perf_counter() - t0
        self.stats.signals += len(signals)
        atr = {s.symbol: s.atr for s in signals}
        for c in candles:
            self.transitions += self.risk.on_candle(c, atr.get(c.symbol, 0.0))
            self._pending_protect += self.risk.on_candle_protect(
                c, self.portfolio.position(c.symbol))
        unit = await self.protect(unit, candles[0].ts)
        for signal in signals:
            unit.signals.append((self.run_id, self.account, signal))
            intent = self.parts.strategy.decide(signal, self.portfolio)
            self.risk.on_signal(signal.symbol, signal.p_up, signal.price)
            if intent is not None:
                if not self.controls.empty():
                    unit = await self.drain_controls(unit)
                unit = await self.act(intent, unit)
        close_ts = candles[0].close_ts
        if self.portfolio.margined:  # perpetuals only: spot has no margin to watch
            margin_moves, exits = self.risk.on_margin(close_ts, self.portfolio, self.markets)
            self.transitions += margin_moves
            self._pending_protect += exits
        unit = await self.protect(unit, candles[0].ts)
        pv = self.portfolio.positions_value()
        equity = self.portfolio.cash + pv
        unit.equity.append(EquitySnapshot(self.account, self.run_id, close_ts,
                                          self.portfolio.cash, pv))
        self.stats.on_step(close_ts, equity, pv != 0 or bool(self.portfolio.positions()))
        self.transitions += self.risk.on_equity(close_ts, equity)
        self.audit_transitions(unit)
        await self.commit(unit)

    async def act(self, intent: OrderIntent, unit: UnitOfWork, tag: str = "") -> UnitOfWork:
        """Where a signal becomes an order. Returns the unit to keep filling."""
        now = self.parts.clock.now_ms()
        decision = self.risk.review(intent, self.portfolio, self.markets[intent.symbol],
                                    self.markets)
        kind = "risk.approved" if decision.approved else "risk.rejected"
        unit.audit.append(self.desk.event(kind, "intent", f"{intent.symbol}@{intent.signal_ts}",
                                          now, {
            "side": intent.side.value, "type": intent.order_type.value,
            "quantity": str(decision.quantity), "reason": decision.reason,
            "intent": intent.reason, "confidence": intent.confidence,
            "model_version": intent.model_version}))
        if not decision.approved:
            self.stats.rejected += 1
            return unit
        if not self.ledger_ok:
            unit.audit.append(self.desk.event("order.skipped", "intent", intent.symbol, now,
                                              {"reason": "ledger unavailable: cannot audit"}))
            return unit
        if intent.reduce_only and not tag:
            # a closing order needs the holdings a resting protective stop has locked up
            await self.desk.cancel_where(unit, "replaced by an exit", intent.symbol,
                                         protective_only=True)
        order = self.desk.new_order(intent, decision.quantity, tag)
        self.desk.record(order, unit, "order.created")
        self.stats.orders += 1
        # The intent is committed before anything is sent (group-committing ledgers excepted).
        if not await self.commit(unit):
            self.desk.record(order.transition(OrderStatus.CANCELLED, now,
                                              "ledger unavailable at submit"),
                             self._backlog, "order.cancelled")
            return UnitOfWork()
        unit = UnitOfWork()
        if not intent.reduce_only and await self._kill_pending(order, unit):
            return await self.drain_controls(unit)  # the cancel commits, then the kill runs
        update = await self.desk.send(order)
        self.desk.apply(update, unit)
        if intent.reduce_only and intent.order_type is OrderType.MARKET and update.order.status\
                .is_terminal and self.portfolio.position(intent.symbol).quantity != 0:
            self._pending_protect += self.risk.reprotect(intent.symbol)  # the stop goes back
        if self.desk.reconcile_wanted:  # the venue's answer says our books may be wrong
            self.desk.reconcile_wanted = False
            unit.audit.append(self.desk.event("reconcile.requested", "account", self.account,
                                              now, {"why": update.order.status_reason,
                                                    "order": update.order.client_order_id}))
            await self.reconcile(unit)
        return unit

    async def _kill_pending(self, order: Order, unit: UnitOfWork) -> bool:
        """Is an entry, committed and about to be sent, overtaken by a kill? A kill recorded in
        the database (``stackbot kill``, the console) latches at once, but reaches this engine
        by a NOTIFY that may not be drained yet: asked here, after the entry's commit, no entry
        committed after a kill latched leaves. Such an entry is cancelled unsent (in ``unit``)
        and the kill is queued for the caller's drain. With the ledger unreachable, nobody can
        tell: the entry is cancelled unsent as well, as when its own commit fails."""
        try:
            if not await self.parts.ledger.kill_pending(self.account):
                return False
            why = "not sent: a kill latched in the ledger after it was decided"
        except LedgerError:
            why = "not sent: ledger unavailable, cannot tell whether a kill is pending"
        now = self.parts.clock.now_ms()
        self.desk.record(order.transition(OrderStatus.CANCELLED, now, why), unit,
                         "order.cancelled")
        log.warning("entry_not_sent", client_order_id=order.client_order_id, why=why)
        await self.operator.poll()
        return True

    async def reconcile(self, unit: UnitOfWork, first_run: bool = False,
                        at_start: bool = False) -> None:
        """Ledger against venue (``bot/reconcile_driver.py``); blocks new orders until they
        agree."""
        await self.reconciler.check(unit, first_run, at_start)

    # ---- protection -------------------------------------------------------------------
    def _on_fill(self, fill: Fill, before: Position, after: Position, order: Order) -> None:
        if before.quantity == 0 and after.quantity != 0:
            self._entry_version[fill.symbol] = order.model_version
        self.stats.on_entry(before.quantity, after.quantity)
        self._pending_protect += self.risk.on_fill(fill, before, after)

    def _liquidation_of(self, pos: Position) -> Decimal | None:
        spec = self.markets.get(pos.symbol)
        if spec is None or not spec.margined or pos.quantity == 0:
            return None
        return position_liquidation(spec, self.risk.margin, pos.quantity, pos.avg_price,
                                    self.portfolio.cash)

    def _on_venue_call(self, ok: bool, ccxt_class: str | None = None) -> None:
        self.transitions += self.risk.on_exchange_call(ok)
        if ccxt_class is not None:
            self.observer.on_venue_error(ccxt_class)

    async def protect(self, unit: UnitOfWork, ts: int) -> UnitOfWork:
        """Place, move or drop stops; exit at market where risk says so; then put back a stop
        that a refused exit took (``act``)."""
        for _ in range(2):
            if not self._pending_protect:  # most steps: nothing to place, move or drop
                break
            unit = await self._protect_once(unit, ts)
        return unit

    async def _protect_once(self, unit: UnitOfWork, ts: int) -> UnitOfWork:
        todo, self._pending_protect = self._pending_protect, []
        for p in todo:
            if not self.controls.empty():
                unit = await self.drain_controls(unit)
            pos = self.portfolio.position(p.symbol)
            version = self._entry_version.get(p.symbol, "risk")
            await self.desk.cancel_where(
                unit, "stop moved or position closed", p.symbol, protective_only=True
            )
            if pos.quantity == 0:
                continue
            if p.exit_reason is not None:
                intent = exit_intent(pos, ts, p.exit_reason, version)
                unit = await self.act(intent, unit, tag="exit")
            elif p.stop_price is not None:
                spec = self.markets[p.symbol]
                intent = exit_intent(pos, ts, "protective stop", version, OrderType.STOP,
                                     spec.round_price(p.stop_price))
                tag = self.desk.stop_tag(p.symbol, ts, p.stop_price)
                unit = await self.act(intent, unit, tag=tag)
        return unit

    def audit_transitions(self, unit: UnitOfWork, channel: str | None = None) -> None:
        if not self.transitions:
            return
        for t in self.transitions:
            payload = transition_payload(t, channel)
            unit.audit.append(
                self.desk.event("risk.state_changed", "account", self.account, t.ts, payload)
            )
            log.warning("trading_state", **payload)
        self.transitions = []
        unit.risk_state[self.account] = (self.risk.machine.current, self.parts.clock.now_ms())

    def snapshot_equity(self) -> Decimal:
        return self.portfolio.equity()

    async def commit(self, unit: UnitOfWork) -> bool:
        """Commit the backlog and ``unit`` together. False (and keep both) if the ledger is
        down: the engine then opens nothing it could not audit, and retries next step."""
        if unit or self._backlog:  # what the risk manager knows goes with every change
            unit.risk_memory[self.account] = self.risk.memory
        if self._backlog:
            self._backlog.absorb(unit)
            unit = self._backlog
        if not unit:
            return True
        t0 = time.perf_counter()
        try:
            await self.parts.ledger.commit(unit)
        except LedgerError as exc:
            if self.ledger_ok:
                log.error("ledger_down", error=str(exc))
            self.ledger_ok = False
            self._backlog = unit
            return False
        if unit is self._backlog:
            self._backlog = UnitOfWork()
        self.observer.on_commit(unit, time.perf_counter() - t0)
        if self.telemetry is not None:
            self.telemetry(unit)
        if not self.ledger_ok:
            log.info("ledger_back")
        self.ledger_ok = True
        return True
