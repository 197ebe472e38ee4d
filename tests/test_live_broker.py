"""The ccxt live broker against the simulator's signed Binance endpoints, through ccxt's real
``binance`` class: client order ids, translated errors, and an ambiguous timeout resolved by
looking the order up, never by sending it twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal as D
from typing import Any

import pytest

from bot.brokers.live import LiveBroker
from bot.clock import WallClock
from bot.config import ExchangeSettings
from bot.domain import Candle, Order, OrderStatus, OrderType, Side
from bot.engine import client_order_id
from bot.exchange.client import make_exchange
from bot.sim.binance import SimBinance, build, start_server

KEY, SECRET = "sim-key-0123456789", "sim-secret-0123456789"


@pytest.fixture
async def venue() -> AsyncIterator[tuple[SimBinance, Any, LiveBroker]]:
    sim = build(["BTC/USDT"], "1m", speed=1.0, history=100, seed=2)
    sim.open_account(KEY, SECRET, {"USDT": "100000", "BTC": "0"})
    runner, port = await start_server(sim)
    cfg = ExchangeSettings(url=f"http://127.0.0.1:{port}", api_key=KEY, secret=SECRET,  # type: ignore[arg-type]
                           timeout_ms=800)
    ex = make_exchange(cfg, with_ws=False)
    broker = LiveBroker(ex, WallClock(), "USDT", recv_window_ms=1000)
    await broker.markets(["BTC/USDT"])
    yield sim, ex, broker
    await ex.close()
    await runner.cleanup()


def market_order(qty: str, side: Side = Side.BUY, ts: int = 1) -> Order:
    cid = client_order_id("acct", "BTC/USDT", ts, side.value)
    return Order(cid, "acct", "run", "BTC/USDT", side, OrderType.MARKET, D(qty),
                 OrderStatus.PENDING_SUBMIT, 0, 0, ts, "v", "test")


def resting_buy(sim: SimBinance, ts: int) -> Order:
    """A limit buy at half the current price: it rests at the venue."""
    price = sim.price("BTCUSDT")
    assert price is not None
    cid = client_order_id("acct", "BTC/USDT", ts, "buy")
    return Order(cid, "acct", "run", "BTC/USDT", Side.BUY, OrderType.LIMIT, D("0.01"),
                 OrderStatus.PENDING_SUBMIT, 0, 0, ts, "v", "test",
                 limit_price=(price * D("0.5")).quantize(D("0.01")))


async def test_market_order_fills_with_client_id(venue: tuple[SimBinance, Any, LiveBroker]) -> None:
    sim, _, broker = venue
    order = market_order("0.01")
    update = await broker.submit(order)
    assert update.order.status is OrderStatus.FILLED
    assert update.order.exchange_order_id is not None
    [fill] = update.fills
    assert fill.quantity == D("0.01") and fill.fee > 0 and fill.fee_currency == "USDT"
    assert sim.account is not None
    assert list(sim.account.by_client) == [order.client_order_id]
    assert sim.account.balances["BTC"] == D("0.01")


async def test_timeout_is_resolved_by_lookup_not_resend(
        venue: tuple[SimBinance, Any, LiveBroker]) -> None:
    sim, _, broker = venue
    assert sim.account is not None
    sim.account.execute_then_delay_s = 2.0  # executed at the venue, answer lost to the timeout
    order = market_order("0.02", ts=2)
    update = await broker.submit(order)
    sim.account.execute_then_delay_s = 0
    assert update.order.status is OrderStatus.FILLED
    assert sum(fill.quantity for fill in update.fills) == D("0.02")
    created = [o for o in sim.account.orders.values() if o.client_id == order.client_order_id]
    assert len(created) == 1  # exactly one order at the venue


async def test_rejection_is_translated(venue: tuple[SimBinance, Any, LiveBroker]) -> None:
    from bot.errors import InsufficientFunds

    _, _, broker = venue
    with pytest.raises(InsufficientFunds):
        await broker.submit(market_order("1000", ts=3))


async def test_recovered_pending_order_is_looked_up_first(
        venue: tuple[SimBinance, Any, LiveBroker]) -> None:
    """After a crash between send and ack, a restart must not send the order again."""
    sim, _, broker = venue
    order = market_order("0.03", ts=4)
    await broker.submit(order)  # reached the venue; pretend the ack was lost with the process
    fresh = LiveBroker(broker.exchange, WallClock(), "USDT")
    fresh.restore([order], [], D(0))
    update = await fresh.submit(order)
    assert update.order.status is OrderStatus.FILLED
    assert sim.account is not None
    assert [o.client_id for o in sim.account.orders.values()].count(order.client_order_id) == 1


async def test_resting_limit_order_is_polled_until_filled(
        venue: tuple[SimBinance, Any, LiveBroker]) -> None:
    sim, _, broker = venue
    ack = await broker.submit(resting_buy(sim, ts=5))
    assert ack.order.status is OrderStatus.OPEN
    candle = Candle("BTC/USDT", "1m", 0, 1, 1, 1, 1, 1)
    assert await broker.on_candle(candle) == []  # nothing changed at the venue
    cancelled = await broker.cancel(ack.order)
    assert cancelled.order.status is OrderStatus.CANCELLED


async def test_protective_stop_rests_at_the_venue(
        venue: tuple[SimBinance, Any, LiveBroker]) -> None:
    """Stops are placed on the exchange (Binance STOP_LOSS via ccxt's triggerPrice)."""
    sim, _, broker = venue
    await broker.submit(market_order("0.05", ts=6))  # something to protect
    price = sim.price("BTCUSDT")
    assert price is not None
    cid = client_order_id("acct", "BTC/USDT", 7, "sell:stop")
    stop = Order(
        cid,
        "acct",
        "run",
        "BTC/USDT",
        Side.SELL,
        OrderType.STOP,
        D("0.05"),
        OrderStatus.PENDING_SUBMIT,
        0,
        0,
        7,
        "v",
        "protective stop",
        stop_price=(price * D("0.5")).quantize(D("0.01")),
        reduce_only=True,
    )
    ack = await broker.submit(stop)
    assert ack.order.status is OrderStatus.OPEN
    assert sim.account is not None
    resting = sim.account.by_client[cid]
    assert resting.type == "STOP_LOSS" and resting.price == stop.stop_price
    assert (await broker.cancel(ack.order)).order.status is OrderStatus.CANCELLED


async def test_unanswered_order_is_written_off_only_after_recv_window(
    venue: tuple[SimBinance, Any, LiveBroker],
) -> None:
    """A reset before the venue saw the order: it stays in doubt until the recvWindow has
    passed (a late arrival could still execute), then it is REJECTED. Nothing is resent."""
    import asyncio

    from bot.sim.faults import FaultPlan

    sim, _, broker = venue
    sim.faults.rules[:] = FaultPlan.from_specs(["reset=every:1@/api/v3/order:POST"]).rules
    order = market_order("0.01", ts=8)
    first = await broker.submit(order)
    sim.faults.rules.clear()
    assert first.order.status is OrderStatus.PENDING_SUBMIT and "unknown" in first.note
    assert broker.in_doubt == 1
    candle = Candle("BTC/USDT", "1m", 0, 1, 1, 1, 1, 1)
    assert await broker.on_candle(candle) == []  # still inside the window: still in doubt
    await asyncio.sleep(2.1)  # recv_window_ms=1000 plus the 1 s margin
    [update] = await broker.on_candle(candle)
    assert (
        update.order.status is OrderStatus.REJECTED
        and "never received" in update.order.status_reason
    )
    assert sim.account is not None and sim.account.orders == {}
    assert sim.faults.counts["reset"] == 1 and broker.in_doubt == 0


async def test_late_execution_inside_the_window_is_found(
    venue: tuple[SimBinance, Any, LiveBroker],
) -> None:
    """The venue holds the request past the client's timeout and then executes it: the first
    lookup misses it, a later poll finds and books it, exactly once."""
    import asyncio

    from bot.sim.faults import FaultPlan

    sim, _, broker = venue
    sim.faults.rules[:] = FaultPlan.from_specs(["timeout=every:1@/api/v3/order:POST"]).rules
    sim.faults.hold_s = 1.0  # the client gives up after 0.8 s
    order = market_order("0.02", ts=9)
    first = await broker.submit(order)
    assert first.order.status is OrderStatus.PENDING_SUBMIT
    sim.faults.rules.clear()
    await asyncio.sleep(0.6)
    [update] = await broker.on_candle(Candle("BTC/USDT", "1m", 0, 1, 1, 1, 1, 1))
    assert update.order.status is OrderStatus.FILLED
    assert sum(f.quantity for f in update.fills) == D("0.02")
    assert sim.account is not None and sim.account.duplicate_client_ids() == {}
    assert len(sim.account.orders) == 1


async def test_fills_come_from_the_venue_trades_exactly(
    venue: tuple[SimBinance, Any, LiveBroker],
) -> None:
    """A market order that fills in part and expires: the fill is the venue's trade, to the
    last digit of price, quantity and commission, and the order ends CANCELLED."""
    from bot.sim.faults import FaultPlan

    sim, _, broker = venue
    sim.faults.rules[:] = FaultPlan.from_specs(["partial_fill=every:1"]).rules
    update = await broker.submit(market_order("0.10000", ts=10))
    sim.faults.rules.clear()
    assert sim.account is not None
    [trade] = sim.account.trades
    [fill] = update.fills
    assert fill.quantity == D(trade["qty"]) < D("0.1")
    assert fill.price == D(trade["price"]) and fill.fee == D(trade["commission"])
    assert update.order.status is OrderStatus.CANCELLED
    assert update.order.filled_qty == fill.quantity


async def test_reads_ride_out_rate_limits_and_server_errors(
    venue: tuple[SimBinance, Any, LiveBroker],
) -> None:
    """Polling a working order through 429 (Retry-After), 418 and 5xx: retried, not failed."""
    from bot.sim.faults import FaultPlan

    sim, _, broker = venue
    ack = await broker.submit(resting_buy(sim, ts=11))
    sim.faults.retry_after_s = 0
    sim.faults.rules[:] = FaultPlan.from_specs(
        [
            "rate_limit=every:4@/api/v3/order:GET",
            "ban=every:5@/api/v3/order:GET",
            "server_error=every:3@/api/v3/order:GET",
        ]
    ).rules
    candle = Candle("BTC/USDT", "1m", 0, 1, 1, 1, 1, 1)
    for _ in range(6):
        assert await broker.on_candle(candle) == []
    assert ack.order.client_order_id in broker._working  # still tracked, never dropped
    assert {"rate_limit", "ban", "server_error"} <= set(sim.faults.counts)


async def test_venue_state_names_orders_the_ledger_does_not_know(
    venue: tuple[SimBinance, Any, LiveBroker],
) -> None:
    from bot.reconcile import reconcile

    sim, ex, broker = venue
    await broker.submit(market_order("0.01", ts=12))
    price = sim.price("BTCUSDT")
    assert price is not None
    # somebody else's order on the same account
    await ex.create_order(
        "BTC/USDT", "limit", "buy", 0.001, float(price * D("0.5")), {"clientOrderId": "manual-1"}
    )
    state, _ = await broker.venue_state(["BTC/USDT"])
    assert state.balances["BTC"] == D("0.01")
    assert [o[0] for o in state.open_orders] == ["manual-1"]
    r = reconcile(
        ["BTC/USDT"], "USDT", {"BTC/USDT": D("0.01")}, state.balances["USDT"], set(), state
    )
    assert not r.agree and r.unknown_orders[0][0] == "manual-1"
    assert "manual-1" in r.describe()


async def test_a_venue_clock_step_is_resynced_and_the_order_sent_once(
    venue: tuple[SimBinance, Any, LiveBroker],
) -> None:
    """The venue's clock jumps 7 s ahead: the order meets Binance's timing rule and gets
    -1021 (refused before processing). The broker resyncs (GET /api/v3/time) and sends it
    again under the same client id: one order at the venue, filled. A read after another step
    back resyncs the same way."""
    sim, ex, broker = venue
    acct = sim.account
    assert acct is not None
    sim.clock.skew_ms = 7_000
    before = sim.requests.get("/api/v3/time", 0)
    update = await broker.submit(market_order("0.01", ts=21))
    assert update.order.status is OrderStatus.FILLED
    assert sim.faults.counts["clock_skew"] == 1  # one -1021, then accepted
    assert sim.requests.get("/api/v3/time", 0) == before + 1
    assert [o.client_id for o in acct.orders.values()] == [update.order.client_order_id]
    sim.clock.skew_ms = 0  # and back: our timestamps are now 7 s ahead of the venue
    state, _ = await broker.venue_state(["BTC/USDT"])
    assert state.balances["BTC"] == D("0.01")
    assert sim.faults.counts["clock_skew"] == 2 and acct.expired_after_recv_window == 0
