"""The engine's side of reconciliation: ask the broker for the venue's view, compare it with
the portfolio (``bot/reconcile.py``, pure), and act on the verdict.

From start-up until a verdict, and whenever ledger and venue disagree, the ``reconcile`` block
keeps every new order out (risk rejects them). Each verdict change, and the verdict at every
start, is audited in the caller's unit of work; so are the venue's open orders the ledger does
not know, once each. Brokers without a venue (paper, backtest) have no ``venue_state``: nothing
to compare, nothing blocked.
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.clock import Clock
from bot.desk import OrderDesk
from bot.domain import ZERO, MarketSpec, Position, UnitOfWork
from bot.errors import ExchangeError
from bot.logs import get_logger
from bot.portfolio import Portfolio
from bot.ports import Broker
from bot.reconcile import reconcile
from risk.manager import RiskManager

log = get_logger("reconciler")


class Reconciler:
    def __init__(self, account: str, broker: Broker, desk: OrderDesk, portfolio: Portfolio,
                 risk: RiskManager, markets: Mapping[str, MarketSpec], clock: Clock) -> None:
        self.account, self.broker, self.desk, self.portfolio = account, broker, desk, portfolio
        self.risk, self.markets, self.clock = risk, markets, clock
        self.first_run = False
        self.awaiting_verdict = False  # from start-up until the first verdict
        self.flagged: set[str] = set()  # unknown venue orders already audited

    async def check(self, unit: UnitOfWork, first_run: bool = False,
                    at_start: bool = False) -> None:
        """Compare the ledger with the venue (brokers that have one). From start-up until a
        verdict, and whenever they disagree, no new order passes risk; the verdict is audited
        when it changes, and at every start."""
        if not self.broker.has_venue:
            return
        now = self.clock.now_ms()
        if at_start:
            self.first_run = first_run
            self.awaiting_verdict = True
            self.risk.machine.block("reconcile", True)
        try:
            answer = await self.broker.venue_state(list(self.markets))
        except ExchangeError as exc:  # keep the last verdict; try again next step
            log.warning("reconcile_unavailable", error=str(exc)[:300])
            return
        if answer is None:
            return
        venue, updates = answer
        for update in updates:
            self.desk.apply(update, unit)
        if venue.cash_flows:  # funding the venue booked: ours too, audited, before comparing
            self.desk.book_flows(list(venue.cash_flows), unit)
        pf = self.portfolio
        first_run = self.first_run
        r = reconcile(list(self.markets), pf.quote, {p.symbol: p.quantity for p in pf.positions()},
                      pf.cash, {o.client_order_id for o in pf.working_orders()}, venue,
                      first_run, self.broker.in_doubt,
                      liquidations={p.symbol: p.liquidation_price for p in pf.positions()
                                    if p.liquidation_price is not None})
        if r.deferred:
            log.info("reconcile_deferred", why=r.deferred)
            if at_start:
                unit.audit.append(self.desk.event("reconcile.deferred", "account", self.account,
                                                  now, {"why": r.deferred}))
            return
        if first_run:
            adopted = [Position(self.account, s, q, p, ZERO, now)
                       for s, (q, p) in r.adopted_positions.items()]
            pf.adopt(pf.cash + r.cash_adopted, adopted)
            for p in adopted:
                unit.positions[(self.account, p.symbol)] = p
            unit.cash[self.account] = (pf.cash, now)
            unit.audit.append(self.desk.event("reconcile.adopted", "account", self.account, now, {
                "cash": str(pf.cash), "positions": {p.symbol: str(p.quantity) for p in adopted}}))
        elif r.cash_adopted:
            pf.adopt(pf.cash + r.cash_adopted, ())
            unit.cash[self.account] = (pf.cash, now)
            unit.audit.append(self.desk.event("reconcile.cash_adopted", "account", self.account,
                                              now, {"deposit": str(r.cash_adopted),
                                                    "cash": str(pf.cash)}))
        for cid, sym, xid in r.unknown_orders:
            if (cid or xid) not in self.flagged:
                self.flagged.add(cid or xid)
                unit.audit.append(self.desk.event("reconcile.unknown_order", "order", cid or xid,
                                                  now, {"symbol": sym, "exchange_order_id": xid}))
        changed = self.risk.machine.block("reconcile", not r.agree)
        if changed or self.awaiting_verdict:
            unit.audit.append(self.desk.event(
                "reconcile.ok" if r.agree else "reconcile.mismatch", "account", self.account,
                now, {"problems": list(r.problems)}))
            unit.risk_state[self.account] = (self.risk.machine.current, now)
            (log.info if r.agree else log.error)("reconciled", verdict=r.describe())
        self.first_run = self.awaiting_verdict = False
