"""The minimal fixed-fraction gate."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import given
from hypothesis import strategies as st

from bot.domain import Candle, Fill, MarketSpec, OrderIntent, Side
from bot.portfolio import Portfolio
from risk.gate import FixedFractionGate

SPEC = MarketSpec("BTC/USDT", "BTC", "USDT", amount_step=D("0.0001"), min_notional=D("5"))


def portfolio(cash: str, price: float, held: str = "0") -> Portfolio:
    p = Portfolio("a", D(cash), "USDT")
    p.mark(Candle("BTC/USDT", "1h", 0, price, price, price, price, 1))
    if D(held):
        p._cash += D(held) * D(str(price))
        p.apply_fill(Fill("f", "c", "a", "BTC/USDT", Side.BUY, D(held), D(str(price)), D(0), "USDT", 0))
    return p


def buy() -> OrderIntent:
    return OrderIntent("BTC/USDT", Side.BUY, "t", 0, "v")


@given(st.decimals(min_value=D("10"), max_value=D("1000000"), places=2),
       st.floats(min_value=1, max_value=100000),
       st.decimals(min_value=D("0.01"), max_value=D("1"), places=2),
       st.decimals(min_value=D("0.01"), max_value=D("1"), places=2))
def test_entry_never_exceeds_fraction_position_cap_or_cash(cash: D, price: float, frac: D,
                                                          cap: D) -> None:
    p = portfolio(str(cash), price)
    d = FixedFractionGate(frac, cap).review(buy(), p, SPEC)
    px = p.price("BTC/USDT")
    assert px is not None
    if d.approved:
        notional = d.quantity * px
        assert notional <= cash * frac
        assert notional <= cash * cap
        assert notional * (1 + SPEC.taker_fee) <= cash
        assert d.quantity == SPEC.floor_qty(d.quantity)
    else:
        assert d.reason


def test_exit_passes_at_held_size() -> None:
    p = portfolio("1000", 100.0, held="2")
    intent = OrderIntent("BTC/USDT", Side.SELL, "t", 0, "v", reduce_only=True)
    d = FixedFractionGate(D("0.1"), D("0.25")).review(intent, p, SPEC)
    assert d.approved and d.quantity == D("2")


def test_spot_cannot_short_and_cap_blocks_adding() -> None:
    gate = FixedFractionGate(D("0.1"), D("0.25"))
    d = gate.review(OrderIntent("BTC/USDT", Side.SELL, "t", 0, "v"), portfolio("1000", 100.0), SPEC)
    assert not d.approved and "short" in d.reason
    full = portfolio("750", 100.0, held="2.5")  # 250 of 1000 equity already held
    d2 = gate.review(buy(), full, SPEC)
    assert not d2.approved and "no room" in d2.reason
