"""Pre-trade controls (the kind MiFID II RTS 6 asks for), one small plugin each.

A control sees the proposed order and either lets it through, shrinks it (returns a smaller
quantity with the reason), or refuses it (quantity 0). Exits that reduce exposure are checked
only by the controls that apply to every order (collar, rate, venue minimums).
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal
from typing import Protocol

from bot.domain import ZERO, MarketSpec, Side, message
from bot.ports import PortfolioView


@message
class Proposal:
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal  # the reference (last) price
    limit_price: Decimal | None
    reduces: bool
    now: int
    market: MarketSpec
    portfolio: PortfolioView


@message
class Verdict:
    quantity: Decimal
    reason: str = ""


class Control(Protocol):
    name: str

    def check(self, p: Proposal) -> Verdict: ...


class MaxNotional:
    name = "max_notional"

    def __init__(self, limit: Decimal) -> None:
        self.limit = limit

    def check(self, p: Proposal) -> Verdict:
        if p.reduces or p.quantity * p.price <= self.limit:
            return Verdict(p.quantity)
        return Verdict(
            p.market.floor_qty(self.limit / p.price), f"order notional capped at {self.limit}"
        )


class MaxQuantity:
    name = "max_quantity"

    def __init__(self, limit: Decimal | None) -> None:
        self.limit = limit

    def check(self, p: Proposal) -> Verdict:
        if self.limit is None or p.reduces or p.quantity <= self.limit:
            return Verdict(p.quantity)
        return Verdict(p.market.floor_qty(self.limit), f"order quantity capped at {self.limit}")


class PriceCollar:
    """A limit price further than ``band`` from the last price is refused (fat finger)."""

    name = "price_collar"

    def __init__(self, band: Decimal) -> None:
        self.band = band

    def check(self, p: Proposal) -> Verdict:
        if p.limit_price is None or p.price <= 0:
            return Verdict(p.quantity)
        off = abs(p.limit_price / p.price - 1)
        if off > self.band:
            return Verdict(
                ZERO,
                f"limit {p.limit_price} is {off:.2%} from last {p.price} (collar {self.band:.0%})",
            )
        return Verdict(p.quantity)


class MaxOpenPositions:
    name = "max_open_positions"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def check(self, p: Proposal) -> Verdict:
        if p.reduces or p.portfolio.position(p.symbol).quantity != 0:
            return Verdict(p.quantity)
        open_ = {s for s in _held_symbols(p.portfolio)}
        pending = {o.symbol for o in p.portfolio.working_orders() if o.side is Side.BUY}
        if len(open_ | pending) >= self.limit:
            return Verdict(ZERO, f"{self.limit} positions already open")
        return Verdict(p.quantity)


def _held_symbols(pf: PortfolioView) -> list[str]:
    return [x.symbol for x in pf.positions()]


class MaxExposure:
    """Per symbol and in total, as shares of equity (working buys count)."""

    name = "max_exposure"

    def __init__(self, per_symbol: Decimal, total: Decimal) -> None:
        self.per_symbol, self.total = per_symbol, total

    def check(self, p: Proposal) -> Verdict:
        if p.reduces:
            return Verdict(p.quantity)
        pf = p.portfolio
        equity = pf.equity()
        if equity <= 0:
            return Verdict(ZERO, "equity is not positive")

        def value(symbol: str) -> Decimal:
            px = pf.price(symbol) or ZERO
            held = abs(pf.position(symbol).quantity) * px
            working = sum(
                (
                    o.remaining * (o.limit_price or px)
                    for o in pf.working_orders(symbol)
                    if o.side is Side.BUY
                ),
                ZERO,
            )
            return held + working

        symbols = set(_held_symbols(pf)) | {o.symbol for o in pf.working_orders()} | {p.symbol}
        room_sym = equity * self.per_symbol - value(p.symbol)
        room_tot = equity * self.total - sum((value(s) for s in symbols), ZERO)
        room = min(room_sym, room_tot)
        if room <= 0:
            return Verdict(ZERO, "no room under the exposure limits")
        if p.quantity * p.price <= room:
            return Verdict(p.quantity)
        which = "per-symbol" if room_sym <= room_tot else "total"
        return Verdict(p.market.floor_qty(room / p.price), f"capped by {which} exposure limit")


class OrderRateThrottle:
    """At most ``count`` orders per ``window_ms`` (exits included: a runaway loop is a runaway)."""

    name = "order_rate"

    def __init__(self, count: int, window_ms: int) -> None:
        self.count, self.window = count, window_ms
        self._times: deque[int] = deque()

    def check(self, p: Proposal) -> Verdict:
        q = self._times
        while q and q[0] <= p.now - self.window:
            q.popleft()
        if len(q) >= self.count:
            return Verdict(ZERO, f"order rate limit: {self.count} per {self.window // 1000}s")
        return Verdict(p.quantity)

    def record(self, now: int) -> None:
        self._times.append(now)

    def state(self) -> list[int]:
        return list(self._times)

    def load(self, times: list[int]) -> None:
        self._times = deque(int(t) for t in times)


class VenueMinimums:
    """The market's precision and minimums: round down to the step, refuse below minimums."""

    name = "venue_minimums"

    def check(self, p: Proposal) -> Verdict:
        qty = p.market.floor_qty(p.quantity)
        problem = p.market.minimum_problem(qty, p.price)
        if problem:
            return Verdict(ZERO, problem)
        return Verdict(qty, "" if qty == p.quantity else "rounded to the market's step")
