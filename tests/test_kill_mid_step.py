"""An operator's command that arrives while the engine is in the middle of a candle step (an
entry's fill booked in memory, the step's unit not committed yet) is carried out between that
step's decisions, and what the step changed before it commits before the command's changes.

What this guards (issue 14's live drill, seen on CI): a ``kill --level flatten`` landed while
a short's entry was at the venue. The kill closed the short and committed "flat"; the step's
own unit, committed after it, still held the position (and cash) as they stood after the
entry, and overwrote them. The ledger then said short while the venue was flat, and in another
run held 50 USDT the venue did not. The books must reach the ledger in the order they changed.

The same at a start: a kill recorded while no instance ran is carried out after what
restoring changed.

The broker is the live one (ccxt's real ``binance`` class against the simulator), where a
market order fills while it is submitted, as at the venue."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from bot.app import drive
from bot.brokers.live import LiveBroker
from bot.clock import SimulatedClock
from bot.config import ExchangeSettings, load_settings
from bot.domain import (
    Channel,
    ControlRequest,
    Mode,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    UnitOfWork,
    command_from,
)
from bot.engine import Engine
from bot.exchange.client import make_exchange
from bot.feeds.files import load_candle_file
from bot.feeds.replay import ReplayFeed
from bot.ledger.control_requests import request_control
from bot.ledger.repository import PostgresLedger, make_engine
from bot.sim.binance import SimBinance, replay, start_server
from bot.sim.faults import FaultPlan
from risk.state import operator_command
from tests.conftest import fetch
from tests.fault_helpers import KEY, SECRET
from tests.helpers import candles, write_series

ACCOUNT = "kill-mid-step"
SYMBOL = "BTC/USDT"


N, SEED = 300, 4


@asynccontextmanager
async def venue() -> AsyncIterator[tuple[SimBinance, int]]:
    sim = replay({SYMBOL: candles(SYMBOL, N, "1h", SEED)}, speed=1.0, history=150)
    sim.open_account(KEY, SECRET, {"USDT": "10000", "BTC": "0"})
    runner, port = await start_server(sim)
    try:
        yield sim, port
    finally:
        await runner.cleanup()


async def run_live(port: int, tmp_path: Path, pg_url: str, account: str, run_id: str,
                   wrap: Callable[[LiveBroker, list[Engine]], None] | None = None,
                   hook: Callable[[Engine], Any] | None = None) -> Engine:
    """One live run (ccxt against the simulator) over the replayed candles; ``wrap`` may
    instrument the broker, ``hook`` sees the engine before it restores."""
    exchange = make_exchange(ExchangeSettings(url=f"http://127.0.0.1:{port}",  # type: ignore[arg-type]
                                              api_key=KEY, secret=SECRET), with_ws=False)
    clock = SimulatedClock()
    broker = LiveBroker(exchange, clock, "USDT")
    feed = ReplayFeed([load_candle_file(write_series(tmp_path, SYMBOL, N, seed=SEED), "1h")])
    settings = load_settings(overrides={"database": {"url": pg_url}, "timeframe": "1h"},
                             environ={})
    engines: list[Engine] = []
    if wrap is not None:
        wrap(broker, engines)

    def seen(engine: Engine) -> None:
        engines.append(engine)
        if hook is not None:
            hook(engine)

    try:
        await drive(settings, run_id, account, Mode.LIVE, "binance", [SYMBOL], feed,
                    broker, PostgresLedger.from_url(pg_url), clock, seen)
    finally:
        await exchange.close()
    return engines[0]


async def assert_flat_and_equal(pg_url: str, account: str, engine: Engine,
                                sim: SimBinance) -> None:
    books = engine.portfolio
    fills = await fetch(pg_url, "SELECT side, quantity FROM fills WHERE account=$1", account)
    assert sorted(f["side"] for f in fills) == ["buy", "sell"], "the kill did not close the entry"
    rows = await fetch(pg_url, "SELECT quantity FROM positions WHERE account=$1 AND symbol=$2",
                       account, SYMBOL)
    cash = await fetch(pg_url, "SELECT cash FROM accounts WHERE account=$1", account)
    # the books and the venue are flat; so must the ledger be, with the same cash
    assert books.position(SYMBOL).quantity == 0
    assert sim.account is not None and sim.account.balances["BTC"] == 0
    assert Decimal(rows[0]["quantity"]) == 0, f"ledger holds {rows[0]['quantity']}, books 0"
    assert Decimal(cash[0]["cash"]) == books.cash == sim.account.balances["USDT"]


async def test_a_kill_during_an_entry_leaves_the_ledger_equal_to_the_books(
        tmp_path: Path, pg_url: str) -> None:
    killed_after: list[str] = []

    def kill_after_the_first_entry(broker: LiveBroker, engines: list[Engine]) -> None:
        real_submit = broker.submit

        async def submit_then_kill(order: Order) -> OrderUpdate:
            update = await real_submit(order)
            if update.fills and not order.reduce_only and not killed_after:
                # the operator's kill lands while the entry is at the venue: its fill is
                # back, the step that sent it is still running
                killed_after.append(order.client_order_id)
                engine = engines[0]
                done = engine.submit_control(ControlRequest(
                    command_from("kill", "drill: kill during an entry", "flatten"),
                    operator="tester", channel=Channel.CLI))
                # the run ends after this step (what follows is HALTED anyway)
                done.add_done_callback(lambda _: engine.request_stop())
            return update

        broker.submit = submit_then_kill  # type: ignore[method-assign]

    async with venue() as (sim, port):
        engine = await run_live(port, tmp_path, pg_url, ACCOUNT, "killmidstep1",
                                wrap=kill_after_the_first_entry)
        assert killed_after, "no entry ever filled: the drill did not happen"
        await assert_flat_and_equal(pg_url, ACCOUNT, engine, sim)


async def test_a_kill_recorded_while_stopped_flattens_at_the_next_start(
        tmp_path: Path, pg_url: str) -> None:
    account = "kill-at-start"

    def stop_after_the_first_entry(broker: LiveBroker, engines: list[Engine]) -> None:
        real_submit = broker.submit

        async def submit_then_stop(order: Order) -> OrderUpdate:
            update = await real_submit(order)
            if update.fills and not order.reduce_only:
                engines[0].request_stop()
            return update

        broker.submit = submit_then_stop  # type: ignore[method-assign]

    async with venue() as (sim, port):
        first = await run_live(port, tmp_path, pg_url, account, "killatstart1",
                               wrap=stop_after_the_first_entry)
        held = first.portfolio.position(SYMBOL).quantity
        assert held > 0, "no entry ever filled: the drill did not happen"
        # the operator's kill while no instance runs, as `stackbot kill` records it
        db = make_engine(pg_url)
        try:
            await request_control(
                db, account, "kill", "drill: kill while stopped", "tester", "flatten",
                lambda stored, ts: operator_command(stored, "kill", "drill: kill while stopped",
                                                    "tester", "flatten", ts))
        finally:
            await db.dispose()
        # the next start carries it out, and the run ends right after restoring
        engine = await run_live(port, tmp_path, pg_url, account, "killatstart2",
                                hook=lambda e: e.request_stop())
        assert engine.risk.machine.state.value == "HALTED"
        await assert_flat_and_equal(pg_url, account, engine, sim)
        done = await fetch(pg_url, "SELECT processed_at FROM control_requests WHERE account=$1",
                           account)
        assert [r["processed_at"] is not None for r in done] == [True]


async def test_a_kill_whose_exit_the_venue_refuses_says_the_position_is_still_open(
        tmp_path: Path, pg_url: str) -> None:
    """``flattened`` counts positions closed, not exits tried: a kill flatten whose exit the
    venue rejects (Binance's -1013 filter failure, HTTP 400, which ccxt maps to InvalidOrder:
    https://developers.binance.com/docs/binance-spot-api-docs/errors; PERCENT_PRICE_BY_SIDE
    bounds a MARKET order's price against the average, so here the venue refuses market
    orders only) reports 0 closed and names the position still open, and the books, the
    ledger and the venue still agree. The exit took the position's protective stop with it
    (a closing order needs the holdings the stop locked up): the stop is back at the venue
    for the whole position. (Before: the position was left without one.)"""
    account = "kill-refused"
    results: list[Any] = []

    async with venue() as (sim, port):

        def kill_with_the_exit_refused(broker: LiveBroker, engines: list[Engine]) -> None:
            real_submit = broker.submit

            async def submit_then_kill(order: Order) -> OrderUpdate:
                if results:  # after the kill, the venue refuses market orders only
                    sim.faults.enabled = order.order_type is OrderType.MARKET
                update = await real_submit(order)
                if (order.order_type is OrderType.STOP and not update.order.status.is_terminal
                        and not results):  # the position is open and its stop rests
                    assert sim.account is not None
                    sim.faults = FaultPlan.from_specs(["reject=1.0"], seed=1)
                    sim.account.faults = sim.faults
                    engine = engines[0]
                    done = engine.submit_control(ControlRequest(
                        command_from("kill", "drill: exit refused", "flatten"),
                        operator="tester", channel=Channel.CLI))
                    results.append(done)
                    done.add_done_callback(lambda _: engine.request_stop())
                return update

            broker.submit = submit_then_kill  # type: ignore[method-assign]

        engine = await run_live(port, tmp_path, pg_url, account, "killrefused1",
                                wrap=kill_with_the_exit_refused)
        assert results, "no protective stop was ever placed: the drill did not happen"
        outcome = results[0].result()
        held = engine.portfolio.position(SYMBOL).quantity
        assert held > 0
        assert sim.faults.counts["reject"] >= 1, "the venue never refused the exit"
        assert outcome.flattened == 0, outcome
        assert outcome.note is not None and SYMBOL in outcome.note, outcome
        rows = await fetch(pg_url, "SELECT quantity FROM positions WHERE account=$1 AND "
                           "symbol=$2", account, SYMBOL)
        assert sim.account is not None
        assert Decimal(rows[0]["quantity"]) == held == sim.account.balances["BTC"]
        resting = [o for o in sim.account.by_client.values()
                   if o.type == "STOP_LOSS" and o.status in ("NEW", "PARTIALLY_FILLED")]
        assert [(o.side, o.qty) for o in resting] == [("SELL", held)], \
            "the position the kill could not close was left without a protective stop"
        working = await fetch(pg_url, "SELECT client_order_id FROM orders WHERE account=$1 AND "
                              "order_type='stop' AND status IN ('open', 'pending_submit')",
                              account)
        assert [r["client_order_id"] for r in working] == [resting[0].client_id]


async def test_an_entry_committed_before_a_cli_kill_latched_is_not_sent_after_it(
        tmp_path: Path, pg_url: str) -> None:
    """``stackbot kill`` latches HALTED in the database at once; the running engine hears of
    it by a NOTIFY it may not have drained yet. An entry whose commit came before the kill but
    whose send would come after must not leave: it is cancelled unsent, and the kill is
    carried out at once. (Before: the entry reached the venue in that window.)"""
    account = "kill-before-send"
    killed: list[str] = []

    def kill_after_the_entry_commits(engine: Engine) -> None:
        ledger = engine.parts.ledger
        real_commit = ledger.commit

        async def commit_then_kill(unit: UnitOfWork) -> None:
            await real_commit(unit)
            entry = [o for o in unit.orders.values()
                     if o.status is OrderStatus.PENDING_SUBMIT and not o.reduce_only]
            if entry and not killed:
                killed.append(entry[0].client_order_id)
                db = make_engine(pg_url)
                try:  # as `stackbot kill` records it, between the entry's commit and its send
                    await request_control(
                        db, account, "kill", "drill: kill before the send", "tester", "cancel",
                        lambda stored, ts: operator_command(stored, "kill", "drill", "tester",
                                                            "cancel", ts))
                finally:
                    await db.dispose()
                engine.request_stop()

        ledger.commit = commit_then_kill  # type: ignore[method-assign]

    async with venue() as (sim, port):
        engine = await run_live(port, tmp_path, pg_url, account, "killbeforesend1",
                                hook=kill_after_the_entry_commits)
        assert killed, "no entry was ever decided: the drill did not happen"
        assert sim.account is not None
        assert killed[0] not in sim.account.by_client, "the entry reached the venue after the kill"
        [row] = await fetch(pg_url, "SELECT status, status_reason FROM orders WHERE "
                            "client_order_id=$1", killed[0])
        assert row["status"] == "cancelled" and "kill" in str(row["status_reason"]), row
        assert engine.risk.machine.state.value == "HALTED"
        done = await fetch(pg_url, "SELECT processed_at FROM control_requests WHERE account=$1",
                           account)
        assert [r["processed_at"] is not None for r in done] == [True], "the kill was not run"
        assert engine.portfolio.position(SYMBOL).quantity == 0 == sim.account.balances["BTC"]
        cash = await fetch(pg_url, "SELECT cash FROM accounts WHERE account=$1", account)
        assert Decimal(cash[0]["cash"]) == engine.portfolio.cash == sim.account.balances["USDT"]
