"""Reconciliation: does the ledger agree with the venue? Pure: no I/O.

Compared, for the traded symbols of one account:

- each base asset's position in the ledger with the venue's total balance (free + locked);
  for perpetuals, each position (signed contracts) with the venue's position;
- the ledger's cash with the venue's quote balance. More at the venue than in the ledger is a
  deposit: adopted and audited. Less is a disagreement;
- for perpetuals, each position's liquidation price with the venue's: a venue price nearer
  the entry than ours (by more than ``LIQUIDATION_TOLERANCE`` of it) means the liquidation
  guard approved stops on a wrong figure, so it is a disagreement;
- the venue's open orders with the ledger's working orders. An open order the ledger does not
  know is flagged by client id, audited, and blocks trading: nobody can say what it will do.

On an account's first start (the ledger holds nothing for it) the venue's balances are adopted
as the starting point, holdings at the venue's last price, and audited as such.

While an order's outcome is in doubt (sent, unanswered) the balances cannot be trusted either
way, so the comparison is deferred rather than failed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from bot.domain import ZERO, VenueState

TOLERANCE = Decimal("0.00000001")
LIQUIDATION_TOLERANCE = Decimal("0.005")  # venues round margins and fees their own way


@dataclass(frozen=True, slots=True)
class Reconciliation:
    agree: bool
    problems: tuple[str, ...] = ()
    unknown_orders: tuple[tuple[str, str, str], ...] = ()  # (client id, symbol, exchange id)
    cash_adopted: Decimal = ZERO  # venue cash above the ledger's, taken as a deposit
    adopted_positions: Mapping[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    deferred: str = ""  # non-empty: not compared, and why

    def describe(self) -> str:
        if self.deferred:
            return f"deferred: {self.deferred}"
        return "ledger and venue agree" if self.agree else "; ".join(self.problems)


def reconcile(symbols: Sequence[str], quote: str, positions: Mapping[str, Decimal],
              cash: Decimal, working: Collection[str], venue: VenueState,
              first_run: bool = False, in_doubt: int = 0,
              tolerance: Decimal = TOLERANCE,
              liquidations: Mapping[str, Decimal] | None = None) -> Reconciliation:
    """Compare ledger (``positions`` by symbol, ``cash``, ``working`` client ids, perpetuals'
    ``liquidations``) with ``venue``."""
    if in_doubt:
        return Reconciliation(True, deferred=f"{in_doubt} order(s) in doubt at the venue")
    bases = {s: s.split("/")[0] for s in symbols}
    if venue.positions is not None:  # perpetuals: positions are the venue's, not balances
        held = {s: venue.positions.get(s, ZERO) for s in symbols}
        marks = {s: venue.entries.get(s, venue.prices.get(s, ZERO)) for s in symbols}
    else:
        held = {s: venue.balances.get(b, ZERO) for s, b in bases.items()}
        marks = {s: venue.prices.get(s, ZERO) for s in symbols}
    if first_run:
        adopted = {s: (q, marks[s]) for s, q in held.items() if abs(q) > tolerance}
        unknown = tuple(o for o in venue.open_orders if o[0] not in working)
        strays = tuple(f"open order {cid or xid} on {sym} at the venue is not in the ledger"
                       for cid, sym, xid in unknown)
        return Reconciliation(not unknown, strays, unknown,
                              venue.balances.get(quote, ZERO) - cash, adopted)
    problems: list[str] = []
    for sym, base in bases.items():
        ours, theirs = positions.get(sym, ZERO), held[sym]
        if abs(ours - theirs) > tolerance:
            what = sym if venue.positions is not None else base
            problems.append(f"{what}: ledger holds {ours}, venue {theirs}")
    for sym, ours_lp in (liquidations or {}).items():
        theirs_lp = venue.liquidations.get(sym, ZERO)
        qty = positions.get(sym, ZERO)
        if theirs_lp <= 0 or ours_lp <= 0 or qty == 0:
            continue  # the venue shows none (cross with margin to spare) or we hold none
        nearer = theirs_lp - ours_lp if qty > 0 else ours_lp - theirs_lp  # towards the entry
        if nearer > ours_lp * LIQUIDATION_TOLERANCE:
            problems.append(f"{sym}: liquidation price {theirs_lp} at the venue, nearer than "
                            f"the ledger's {ours_lp} the guard placed the stop by")
    venue_cash = venue.balances.get(quote, ZERO)
    adopted_cash = ZERO
    if venue_cash < cash - tolerance:
        problems.append(f"{quote}: ledger holds {cash}, venue only {venue_cash}")
    elif venue_cash > cash + tolerance:
        adopted_cash = venue_cash - cash
    unknown = tuple(o for o in venue.open_orders if o[0] not in working)
    problems += [f"open order {cid or xid} on {sym} at the venue is not in the ledger"
                 for cid, sym, xid in unknown]
    return Reconciliation(not problems, tuple(problems), unknown, adopted_cash)
