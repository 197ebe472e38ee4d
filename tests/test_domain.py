"""Order state machine, position accounting, client ids."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.domain import Fill, InvalidTransition, Order, OrderStatus, OrderType, Position, Side
from bot.engine import client_order_id


def order(qty: str = "1", status: OrderStatus = OrderStatus.PENDING_SUBMIT) -> Order:
    return Order("cid", "acct", "run", "BTC/USDT", Side.BUY, OrderType.MARKET, D(qty), status,
                 0, 0, 0, "v1", "test")


def fill(qty: str, price: str, side: Side = Side.BUY, n: int = 1) -> Fill:
    return Fill(f"cid:{n}", "cid", "acct", "BTC/USDT", side, D(qty), D(price), D("0"), "USDT", n)


def test_transitions_follow_the_state_machine() -> None:
    o = order().transition(OrderStatus.OPEN, 1)
    assert o.status is OrderStatus.OPEN
    with pytest.raises(InvalidTransition):
        o.transition(OrderStatus.PENDING_SUBMIT, 2)
    done = o.transition(OrderStatus.CANCELLED, 3)
    with pytest.raises(InvalidTransition, match="cancelled -> open"):
        done.transition(OrderStatus.OPEN, 4)


def test_partial_then_full_fill() -> None:
    o = order("2").transition(OrderStatus.OPEN, 1)
    o = o.apply_fill(fill("0.5", "100"))
    assert o.status is OrderStatus.PARTIALLY_FILLED and o.remaining == D("1.5")
    o = o.apply_fill(fill("1.5", "104", n=2))
    assert o.status is OrderStatus.FILLED
    assert o.avg_fill_price == D("103")
    with pytest.raises(ValueError, match="overfills"):
        o.apply_fill(fill("0.1", "1", n=3))


def test_client_order_id_is_deterministic_and_short() -> None:
    a = client_order_id("acct", "BTC/USDT", 123, "buy")
    assert a == client_order_id("acct", "BTC/USDT", 123, "buy")
    assert a != client_order_id("acct", "BTC/USDT", 124, "buy")
    assert a != client_order_id("other", "BTC/USDT", 123, "buy")
    assert len(a) <= 36 and a.isalnum()


prices = st.decimals(min_value=D("0.01"), max_value=D("100000"), places=2)
qtys = st.decimals(min_value=D("0.001"), max_value=D("10"), places=3)


@given(st.lists(st.tuples(st.booleans(), qtys, prices), min_size=1, max_size=30), prices)
def test_position_pnl_conserves_money(trades: list[tuple[bool, D, D]], mark: D) -> None:
    """Realized + unrealized P&L equals the cash flows plus the marked holdings."""
    pos = Position("a", "X/Y")
    cash = D(0)
    for i, (buy, q, p) in enumerate(trades):
        side = Side.BUY if buy else Side.SELL
        pos = pos.apply_fill(Fill(str(i), "c", "a", "X/Y", side, q, p, D(0), "Y", i))
        cash += -q * p if buy else q * p
    unrealized = (mark - pos.avg_price) * pos.quantity
    assert pos.realized_pnl + unrealized == pytest.approx(cash + pos.quantity * mark, abs=D("1e-6"))
