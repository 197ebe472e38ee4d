"""The paper fill model."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from bot.brokers.paper import PaperBroker, static_markets
from bot.clock import SimulatedClock
from bot.domain import Candle, MarketSpec, Order, OrderStatus, OrderType, Side

SPEC = MarketSpec("BTC/USDT", "BTC", "USDT", amount_step=D("0.001"), price_tick=D("0.01"),
                  min_qty=D("0.001"), min_notional=D("10"), maker_fee=D("0.0005"),
                  taker_fee=D("0.001"))
H = 3_600_000


def candle(i: int, o: float, h: float, low: float, c: float, v: float = 1000) -> Candle:
    return Candle("BTC/USDT", "1h", i * H, o, h, low, c, v)


def new_order(qty: str, side: Side = Side.BUY, kind: OrderType = OrderType.MARKET,
              limit: str | None = None, stop: str | None = None, cid: str = "o1") -> Order:
    return Order(cid, "acct", "run", "BTC/USDT", side, kind, D(qty), OrderStatus.PENDING_SUBMIT,
                 H, H, 0, "v", "test", limit_price=D(limit) if limit else None,
                 stop_price=D(stop) if stop else None)


async def broker(cash: str = "100000", **kw: object) -> PaperBroker:
    b = PaperBroker(static_markets(overrides={"BTC/USDT": SPEC}), SimulatedClock(H), "USDT",
                    D(cash), **kw)  # type: ignore[arg-type]
    await b.markets(["BTC/USDT"])
    await b.on_candle(candle(0, 100, 101, 99, 100))  # a reference price
    return b


async def test_market_fills_at_next_open_with_slippage_and_taker_fee() -> None:
    b = await broker(slippage_bps=D("10"))
    ack = await b.submit(new_order("2"))
    assert ack.order.status is OrderStatus.OPEN
    [u] = await b.on_candle(candle(1, 110, 112, 108, 111))
    [f] = u.fills
    assert f.price == D("110.11")  # 110 * (1 + 0.001)
    assert f.quantity == D("2") and u.order.status is OrderStatus.FILLED
    assert f.fee == (D("2") * D("110.11") * D("0.001")).quantize(D("0.00000001"))
    assert b.cash == D("100000") - f.quantity * f.price - f.fee


async def test_limit_needs_price_to_trade_through() -> None:
    b = await broker()
    await b.submit(new_order("1", kind=OrderType.LIMIT, limit="95"))
    assert await b.on_candle(candle(1, 100, 101, 95, 100)) == []  # touched, not through
    [u] = await b.on_candle(candle(2, 99, 100, 94, 96))
    assert u.fills[0].price == D("95") and u.fills[0].liquidity == "maker"


async def test_limit_gapped_through_fills_at_open() -> None:
    b = await broker()
    await b.submit(new_order("1", kind=OrderType.LIMIT, limit="95"))
    [u] = await b.on_candle(candle(1, 90, 92, 89, 91))
    assert u.fills[0].price == D("90")


async def test_stop_triggers_inside_candle_and_gaps_fill_at_open() -> None:
    b = await broker(slippage_bps=D("0"))
    # hold 2 BTC first
    await b.submit(new_order("2", cid="buy"))
    await b.on_candle(candle(1, 100, 101, 99, 100))
    await b.submit(new_order("1", Side.SELL, OrderType.STOP, stop="95", cid="stop1"))
    [u] = await b.on_candle(candle(2, 99, 100, 94, 96))
    assert u.fills[0].price == D("95")  # traded through inside the candle
    await b.submit(new_order("1", Side.SELL, OrderType.STOP, stop="90", cid="stop2"))
    [u2] = await b.on_candle(candle(3, 85, 86, 80, 82))
    assert u2.fills[0].price == D("85")  # gapped through: the open, not the stop
    slipped = await broker(slippage_bps=D("20"))
    await slipped.submit(new_order("2", cid="buy"))
    await slipped.on_candle(candle(1, 100, 101, 99, 100))
    await slipped.submit(new_order("1", Side.SELL, OrderType.STOP, stop="95", cid="s3"))
    [u3] = await slipped.on_candle(candle(2, 99, 100, 94, 96))
    assert u3.fills[0].price == D("94.81")  # 95 * (1 - 0.002), rounded to the tick


async def test_participation_cap_gives_partial_fills() -> None:
    b = await broker(participation=D("0.1"))
    await b.submit(new_order("15"))
    [u] = await b.on_candle(candle(1, 100, 101, 99, 100, v=100))  # cap 10
    assert u.fills[0].quantity == D("10")
    assert u.order.status is OrderStatus.PARTIALLY_FILLED
    [u2] = await b.on_candle(candle(2, 100, 101, 99, 100, v=100))
    assert u2.fills[0].quantity == D("5") and u2.order.status is OrderStatus.FILLED


async def test_precision_and_minimums_reject() -> None:
    b = await broker()
    off_step = await b.submit(new_order("0.0015"))
    assert off_step.order.status is OrderStatus.REJECTED
    assert "multiple of the step" in off_step.order.status_reason
    tiny = await b.submit(new_order("0.001", cid="tiny"))  # 0.1 USDT < 10 minimum
    assert (
        tiny.order.status is OrderStatus.REJECTED
        and "below the market minimum" in tiny.order.status_reason
    )


async def test_insufficient_funds_rejected_like_a_venue() -> None:
    b = await broker(cash="50")
    u = await b.submit(new_order("1"))
    assert u.order.status is OrderStatus.REJECTED
    assert "insufficient funds" in u.order.status_reason
    sell = await b.submit(new_order("1", Side.SELL, cid="s"))
    assert "insufficient balance" in sell.order.status_reason


async def test_cancel_working_order() -> None:
    b = await broker()
    await b.submit(new_order("1", kind=OrderType.LIMIT, limit="50"))
    u = await b.cancel(new_order("1", kind=OrderType.LIMIT, limit="50"))
    assert u.order.status is OrderStatus.CANCELLED
    assert await b.on_candle(candle(1, 40, 41, 39, 40)) == []


@pytest.mark.parametrize("fee_rate", [D("0"), D("0.002")])
async def test_fee_override(fee_rate: D) -> None:
    b = await broker(fee_rate=fee_rate)
    await b.submit(new_order("1"))
    [u] = await b.on_candle(candle(1, 100, 101, 99, 100))
    assert u.fills[0].fee == (u.fills[0].price * fee_rate).quantize(D("0.00000001"))
