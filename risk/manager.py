"""The risk manager: the mandatory gate between a strategy's intent and an order.

``review`` answers every intent with approve, shrink or reject and the reason. Around it the
manager watches equity, candles, trades, exchange calls and predictions through its breakers,
keeps the trading state machine, and says which protective orders (ATR stop, take-profit,
chandelier trail) each position needs. It does no I/O: the engine executes and audits what it
returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from bot.domain import (
    ZERO,
    BreakerReading,
    Candle,
    CandleObs,
    ClockObs,
    EquityObs,
    ExchangeCallObs,
    FeedObs,
    Fill,
    KillLevel,
    MarginObs,
    MarketSpec,
    OrderIntent,
    Position,
    PredictionObs,
    Protect,
    RiskDecision,
    RiskReport,
    RiskState,
    Side,
    TradeClosedObs,
    Transition,
    Trip,
    evolve,
)
from bot.ports import PortfolioView
from risk.breakers import (
    Breaker,
    ConsecutiveLossBreaker,
    DailyLossBreaker,
    DrawdownBreaker,
    ExchangeErrorBreaker,
    MarginRatioBreaker,
    ModelDegradationBreaker,
    Observation,
    StaleDataBreaker,
    VolatilityBreaker,
)
from risk.controls import (
    Control,
    MaxExposure,
    MaxNotional,
    MaxOpenPositions,
    MaxQuantity,
    OrderRateThrottle,
    PriceCollar,
    Proposal,
    VenueMinimums,
)
from risk.margin import (
    MarginTerms,
    cross_others,
    initial_margin,
    margin_ratio,
    position_liquidation,
)
from risk.settings import RiskSettings
from risk.sizing import SizingInputs, SizingParams, size_entry
from risk.state import StateMachine
from risk.stops import StopLevels


class RiskManager:
    def __init__(self, cfg: RiskSettings, timeframe_ms: int, state: RiskState | None = None,
                 round_trip_cost: float = 0.003, venue_stops: bool = True,
                 margin: MarginTerms | None = None) -> None:
        self.cfg = cfg
        self.margin = margin or MarginTerms()
        self.tf = timeframe_ms
        self.machine = StateMachine(state)
        self.venue_stops = venue_stops
        self.sizing = SizingParams(cfg.kelly_fraction, cfg.k_stop, cfg.k_target,
                                   cfg.max_risk_per_trade, round_trip_cost, cfg.disagreement_limit,
                                   cfg.fixed_risk_per_trade)
        self._errors = ExchangeErrorBreaker(cfg.max_exchange_error_rate, cfg.exchange_error_window)
        self._stale_breaker = StaleDataBreaker(timeframe_ms, cfg.stale_after_timeframes)
        self._model_breaker = ModelDegradationBreaker(cfg.model_baseline_accuracy,
                                                      cfg.model_accuracy_drop)
        self.breakers: list[Breaker] = [
            DrawdownBreaker(cfg.drawdown_limit, int(cfg.drawdown_window_days * 86_400_000)),
            DailyLossBreaker(cfg.daily_loss_limit),
            ConsecutiveLossBreaker(cfg.consecutive_losses, cfg.cooldown_candles * timeframe_ms),
            self._stale_breaker,
            self._errors,
            VolatilityBreaker(cfg.volatility_k, cfg.volatility_window,
                              cfg.volatility_hold_candles * timeframe_ms),
            self._model_breaker,
            MarginRatioBreaker(cfg.margin_ratio_reduce, cfg.margin_ratio_flatten,
                               cfg.volatility_hold_candles * timeframe_ms),
        ]
        self._watchers: dict[type, list[Breaker]] = {}
        self._ok_call = ExchangeCallObs(-1, True)
        self.throttle = OrderRateThrottle(cfg.max_orders, cfg.max_orders_window_s * 1000)
        self.controls: list[Control] = [
            MaxNotional(cfg.max_order_notional), MaxQuantity(cfg.max_order_quantity),
            PriceCollar(cfg.price_collar), MaxOpenPositions(cfg.max_open_positions),
            MaxExposure(cfg.max_exposure_symbol, cfg.max_exposure_total), self.throttle,
            VenueMinimums(),
        ]
        self.report = RiskReport()
        self.now = 0
        self._atr: dict[str, float] = {}
        self._levels: dict[str, StopLevels] = {}
        self._round_trip: dict[str, float] = {}  # realized P&L minus fees since entry
        self._last_call: dict[str, tuple[float, float]] = {}  # symbol -> (p_up, close)
        self._placed_stop: dict[str, float] = {}  # the stop price resting at the venue

    # ---- the gate -----------------------------------------------------------------------
    def review(self, intent: OrderIntent, portfolio: PortfolioView, market: MarketSpec,
               markets: Mapping[str, MarketSpec] | None = None) -> RiskDecision:
        """Approve, shrink or refuse ``intent`` on ``market``; ``markets`` (every traded
        symbol's) lets a perpetual entry count the account's other positions by their own
        contract size, leverage and brackets."""
        d = self._review(intent, portfolio, market, markets or {})
        kind = "approved" if d.approved else "rejected"
        if d.approved and intent.quantity is not None and d.quantity < intent.quantity:
            kind = "shrunk"
        self.report.decisions[kind] = self.report.decisions.get(kind, 0) + 1
        if d.approved:
            self.throttle.record(self.now)
        return d

    def _review(self, intent: OrderIntent, pf: PortfolioView, market: MarketSpec,
                markets: Mapping[str, MarketSpec]) -> RiskDecision:
        pos = pf.position(intent.symbol)
        held = pos.quantity
        reduces = (intent.side is Side.SELL and held > 0) or (intent.side is Side.BUY and held < 0)
        price = pf.price(intent.symbol)
        if (price is None or price <= 0) and reduces:
            # an exit before the first candle (a kill flatten carried out at start): the
            # entry price stands in for the controls; closing needs no fresh price
            price = pos.avg_price
        if price is None or price <= 0:
            return RiskDecision(intent, False, ZERO, "no price for the symbol yet")
        if "reconcile" in self.machine.current.blocks:
            return RiskDecision(intent, False, ZERO, "ledger and venue disagree: no new orders "
                                "until they are reconciled")
        if intent.reduce_only and not reduces:
            return RiskDecision(intent, False, ZERO, "reduce-only order would not reduce")
        if not self.machine.permits(reduces, self.now):
            return RiskDecision(intent, False, ZERO, self.machine.entry_block_reason(self.now))
        if reduces:
            want = min(intent.quantity or abs(held), abs(held))
            reason = "reduces exposure"
        else:
            if intent.side is Side.SELL and not market.margined:
                return RiskDecision(intent, False, ZERO, "spot account cannot open a short")
            s = size_entry(SizingInputs(float(pf.equity()), float(price),
                                        self._atr.get(intent.symbol, 0.0), intent.confidence,
                                        intent.dispersion, intent.side.sign), self.sizing)
            if s.quantity <= 0:
                return RiskDecision(intent, False, ZERO, s.reason)
            want = Decimal(repr(s.quantity))
            if intent.quantity is not None:
                want = min(want, intent.quantity)
            reason = s.reason
        qty = want
        proposal = Proposal(intent.symbol, intent.side, qty, price, intent.limit_price, reduces,
                            self.now, market, pf)
        for control in self.controls:
            if reduces and control.name in ("max_notional", "max_quantity", "max_open_positions",
                                            "max_exposure"):
                continue
            v = control.check(proposal)
            if v.quantity <= 0:
                return RiskDecision(intent, False, ZERO, f"{control.name}: {v.reason}")
            if v.quantity < qty:
                qty, reason = v.quantity, f"{reason}; {v.reason}"
                proposal = evolve(proposal, quantity=qty)  # the next control sees the shrunk one
        if market.margined and not reduces:
            return self._margin_gate(intent, qty, price, market, pf, reason, markets)
        return RiskDecision(intent, True, qty, reason)

    def _margin_gate(self, intent: OrderIntent, qty: Decimal, price: Decimal,
                     market: MarketSpec, pf: PortfolioView, reason: str,
                     markets: Mapping[str, MarketSpec]) -> RiskDecision:
        """A perpetual entry: shrink it to the free margin, then the liquidation guard: its
        stop must sit ``liquidation_buffer_atr`` ATRs inside its liquidation price (under
        cross margin, with the account's other positions in the formula)."""
        terms = self.margin
        lev = terms.leverage_of(market, qty * price * market.contract_size)
        held = [(markets.get(p.symbol, market), p) for p in pf.positions()]
        used = ZERO
        for spec, p in held:
            notional = abs(p.quantity) * p.avg_price * spec.contract_size
            used += initial_margin(notional, terms.leverage_of(spec, notional))
        free = pf.equity() - used
        afford = market.floor_qty(max(free, ZERO) * lev / (price * market.contract_size))
        if afford < qty:
            if afford <= 0:
                return RiskDecision(intent, False, ZERO, f"margin: no free margin ({free:.2f} "
                                    f"{market.settle or 'quote'} at {lev}x)")
            qty, reason = afford, f"{reason}; shrunk to the free margin at {lev}x"
        if not self.cfg.liquidation_guard:
            return RiskDecision(intent, True, qty, f"{reason}; liquidation guard OFF")
        atr = self._atr.get(intent.symbol, 0.0)
        direction = intent.side.sign
        others = cross_others(
            (spec, p.quantity, p.avg_price, pf.mark_price(p.symbol) or p.avg_price)
            for spec, p in held if p.symbol != intent.symbol)
        liq = position_liquidation(market, terms, direction * qty, price, pf.cash, others)
        if liq is None:
            return RiskDecision(intent, True, qty, f"{reason}; no liquidation price at {lev}x")
        if not atr > 0:
            self.report.guard_rejections += 1
            return RiskDecision(intent, False, ZERO, "liquidation guard: no ATR, so no stop "
                                f"to compare with the liquidation price {liq:.8g}")
        stop = float(price) - direction * self.sizing.bet(direction)[0] * atr
        gap = direction * (stop - float(liq)) / atr
        where = (f"stop {stop:.8g}, liquidation {liq:.8g} at {lev}x {terms.mode.value}: "
                 f"{gap:.2f} ATR apart, {self.cfg.liquidation_buffer_atr} needed")
        if gap < self.cfg.liquidation_buffer_atr:
            self.report.guard_rejections += 1
            return RiskDecision(intent, False, ZERO, f"liquidation guard: {where}")
        return RiskDecision(intent, True, qty, f"{reason}; {where}")

    # ---- observations ---------------------------------------------------------------------
    def _apply(self, trips: Iterable[Trip], ts: int) -> list[Transition]:
        out = []
        for trip in trips:
            self.report.trips[trip.breaker] = self.report.trips.get(trip.breaker, 0) + 1
            if trip.retrain:
                self.report.retrain_requests += 1
            if trip.cooldown_until is not None:
                self.machine.cooldown(trip.cooldown_until)
            if trip.block is not None:
                self.machine.block(*trip.block)
            if trip.target is not None:
                t = self.machine.trip(trip.target, trip.reason, trip.breaker, ts, trip.until)
                if t is not None:
                    out.append(t)
        for t in out:
            self._remember(t)
        return out

    def _remember(self, t: Transition) -> None:
        self.report.transitions.append({"ts": t.ts, "from": t.before.value, "to": t.after.value,
                                        "by": t.source, "reason": t.reason})

    def _watched(self, kind: type) -> list[Breaker]:
        """The breakers that watch observations of ``kind`` (none: nothing to build)."""
        watchers = self._watchers.get(kind)
        if watchers is None:
            watchers = self._watchers[kind] = [b for b in self.breakers
                                               if issubclass(kind, b.watches)]
        return watchers

    def observe(self, obs: Observation, ts: int) -> list[Transition]:
        watchers = self._watchers.get(type(obs)) or self._watched(type(obs))
        if not watchers:
            return []
        trips = watchers[0].observe(obs)
        for b in watchers[1:]:  # most observations have one or two breakers watching them
            more = b.observe(obs)
            if more:
                trips = trips + more
        return self._apply(trips, ts) if trips else []

    def on_candle(self, candle: Candle, atr: float) -> list[Transition]:
        self.now = max(self.now, candle.close_ts)
        if atr > 0:
            self._atr[candle.symbol] = atr
        out = []
        t = self.machine.tick(self.now)
        if t is not None:
            self._remember(t)
            out.append(t)
        last = self._last_call.pop(candle.symbol, None)
        if last is not None and candle.close != last[1] and self._watched(PredictionObs):
            out += self.observe(
                PredictionObs(self.now, (last[0] > 0.5) == (candle.close > last[1])), self.now
            )
        out += self.observe(CandleObs(candle.close_ts, candle.symbol, atr), self.now)
        return out

    def on_margin(self, ts: int, pf: PortfolioView,
                  markets: Mapping[str, MarketSpec]) -> tuple[list[Transition], list[Protect]]:
        """Each perpetual position's margin ratio, at the mark: the margin-ratio breaker moves
        to REDUCING at ``margin_ratio_reduce``; at ``margin_ratio_flatten`` the position is
        closed at market."""
        out: list[Transition] = []
        exits: list[Protect] = []
        for pos in pf.positions():
            spec = markets.get(pos.symbol)
            if spec is None or not spec.margined:
                continue
            mark = pf.mark_price(pos.symbol) or pos.avg_price
            ratio = margin_ratio(spec, self.margin, pos.quantity, pos.avg_price, mark,
                                 pf.equity())
            out += self.observe(MarginObs(ts, pos.symbol, ratio), ts)
            if ratio >= self.cfg.margin_ratio_flatten:
                exits.append(Protect(pos.symbol, exit_reason=(
                    f"margin ratio {ratio:.3f} >= {self.cfg.margin_ratio_flatten}: flatten")))
        return out, exits

    def on_signal(self, symbol: str, p_up: float, close: float) -> None:
        self._last_call[symbol] = (p_up, close)

    def on_equity(self, ts: int, equity: Decimal) -> list[Transition]:
        return self.observe(EquityObs(ts, float(equity)), ts)

    def on_clock(self, now: int) -> list[Transition]:
        self.now = max(self.now, now)
        out = []
        t = self.machine.tick(now)
        if t is not None:
            self._remember(t)
            out.append(t)
        return out + self.observe(ClockObs(now), now)

    def on_feed(self, ts: int, stale: bool, reason: str = "") -> list[Transition]:
        return self.observe(FeedObs(ts, stale, reason), ts)

    def on_exchange_call(self, ok: bool) -> list[Transition]:
        obs = self._ok_call
        if not ok or obs.ts != self.now:
            obs = ExchangeCallObs(self.now, ok)
            if ok:  # a step's venue calls mostly succeed: one observation for them all
                self._ok_call = obs
        trips = self._errors.observe(obs)
        return self._apply(trips, self.now) if trips else []

    def model_health(self) -> dict[str, object]:
        return self._model_breaker.health()

    # ---- restart ------------------------------------------------------------------------
    def memory(self) -> dict[str, Any]:
        """Everything a decision depends on, as plain JSON: the trading state, every
        breaker's window, the protective levels of open positions, the order throttle. The
        engine commits it with every unit of work; ``restore`` brings it back, so a restart
        never changes what the manager would decide."""
        return {
            "machine": self.machine.current.snapshot(),
            "now": self.now,
            "breakers": {b.name: b.state() for b in self.breakers},
            "atr": dict(self._atr),
            "levels": {s: list(dataclasses.astuple(v)) for s, v in self._levels.items()},
            "round_trip": dict(self._round_trip),
            "last_call": {s: list(v) for s, v in self._last_call.items()},
            "placed_stop": dict(self._placed_stop),
            "orders": self.throttle.state(),
        }

    def restore(self, state: RiskState | None, memory: Mapping[str, Any] | None = None) -> None:
        """Carry on from the ledger: the trading state (``state``, which operators may have
        changed while no instance ran) and the rest of ``memory``."""
        m = dict(memory or {})
        latched = state or (RiskState.restore(m["machine"]) if m.get("machine") else None)
        if latched is not None:
            self.machine.restore(latched)
        windows = m.get("breakers") or {}
        for b in self.breakers:
            b.load(dict(windows.get(b.name) or {}))
        self._stale_breaker.adopt_blocks(self.machine.current.blocks)
        self.now = int(m.get("now", self.now))
        self._atr = {str(k): float(v) for k, v in (m.get("atr") or {}).items()}
        self._levels = {
            str(k): StopLevels(*map(float, v)) for k, v in (m.get("levels") or {}).items()
        }
        self._round_trip = {str(k): float(v) for k, v in (m.get("round_trip") or {}).items()}
        self._last_call = {
            str(k): (float(v[0]), float(v[1])) for k, v in (m.get("last_call") or {}).items()
        }
        self._placed_stop = {str(k): float(v) for k, v in (m.get("placed_stop") or {}).items()}
        self.throttle.load(list(m.get("orders") or ()))

    def readings(self) -> list[BreakerReading]:
        cfg = self.cfg
        limits = {
            "drawdown": (cfg.drawdown_limit, "share"),
            "daily_loss": (cfg.daily_loss_limit, "share"),
            "consecutive_losses": (float(cfg.consecutive_losses), "count"),
            "stale_data": (0.0, "count"),
            "exchange_errors": (cfg.max_exchange_error_rate, "share"),
            "volatility": (cfg.volatility_k, "ratio"),
            "model_degradation": (
                (cfg.model_baseline_accuracy or 0.0) - cfg.model_accuracy_drop,
                "share",
            ),
            "margin_ratio": (cfg.margin_ratio_reduce, "ratio"),
        }
        return [BreakerReading(b.name, b.reading(), *limits[b.name]) for b in self.breakers]

    def blocks_explained(self) -> dict[str, str]:
        """Entry blocks an operator's resume does not lift, and what does."""
        why = {}
        for block in sorted(self.machine.current.blocks):
            if block == "reconcile":
                why[block] = "ledger and venue disagree: lifts when a reconciliation agrees"
            elif block == "stale:feed":
                why[block] = "the feed's reads keep failing: lifts when data flows again"
            elif block.startswith("stale:"):
                why[block] = "no fresh candle: lifts on the symbol's next closed candle"
            else:
                why[block] = "set by a breaker: lifts when its condition clears"
        return why

    # ---- operators --------------------------------------------------------------------
    def kill(self, level: KillLevel, reason: str, operator: str, ts: int) -> Transition:
        t = self.machine.kill(level, reason, operator, ts)
        self._remember(t)
        return t

    def resume(self, reason: str, operator: str, ts: int) -> Transition:
        t = self.machine.resume(reason, operator, ts)
        self._remember(t)
        return t

    # ---- protection -------------------------------------------------------------------
    def on_fill(self, fill: Fill, before: Position, after: Position) -> list[Protect]:
        """Entries get a stop; a closed position reports its round trip to the breakers."""
        sym = fill.symbol
        self._round_trip[sym] = (
            self._round_trip.get(sym, 0.0)
            + float(after.realized_pnl - before.realized_pnl)
            - float(fill.fee)
        )
        if after.quantity == 0:
            pnl = self._round_trip.pop(sym, 0.0)
            self._levels.pop(sym, None)
            self._placed_stop.pop(sym, None)
            self.observe(TradeClosedObs(fill.ts, sym, pnl), fill.ts)
            return [Protect(sym)]  # nothing left to protect: cancel its stop
        if before.quantity * after.quantity <= 0:  # opened, or flipped through zero
            atr = self._atr.get(sym, 0.0)
            if atr <= 0:
                return []
            direction = 1.0 if after.quantity > 0 else -1.0
            self._levels[sym] = StopLevels.on_entry(
                float(fill.price), atr, *self.sizing.bet(direction), direction)
            self._placed_stop[sym] = self._levels[sym].stop
        levels = self._levels.get(sym)
        if levels is None or not self.venue_stops:
            return []
        return [Protect(sym, stop_price=Decimal(repr(levels.stop)))]

    def reprotect(self, symbol: str) -> list[Protect]:
        """An exit that left the position open (refused, or not wholly filled) took its stop
        with it (a closing order needs the holdings the stop locked up): the stop goes back,
        at the level last placed, for what is still held."""
        placed = self._placed_stop.get(symbol)
        if placed is None or not self.venue_stops:
            return []
        return [Protect(symbol, stop_price=Decimal(repr(placed)))]

    def on_candle_protect(self, candle: Candle, position: Position) -> list[Protect]:
        levels = self._levels.get(candle.symbol)
        if levels is None or position.quantity == 0:
            return []
        hit = levels.hit(candle.low, candle.high)
        if hit == "target":
            return [Protect(candle.symbol, exit_reason=f"take-profit at {levels.target:.8g}")]
        if hit == "stop" and not self.venue_stops:
            return [Protect(candle.symbol, exit_reason=f"stop (watched) at {levels.stop:.8g}")]
        trailed = levels.trail(
            candle.high, self._atr.get(candle.symbol, levels.atr), self.cfg.k_chandelier,
            candle.low,
        )
        self._levels[candle.symbol] = trailed
        # move the venue's stop only in steps worth an order (a quarter ATR), not every tick
        moved = (trailed.stop - self._placed_stop.get(candle.symbol, levels.stop)) * \
            trailed.direction
        if moved > 0.25 * trailed.atr and self.venue_stops:
            self._placed_stop[candle.symbol] = trailed.stop
            return [Protect(candle.symbol, stop_price=Decimal(repr(trailed.stop)))]
        return []
