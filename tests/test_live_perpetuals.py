"""Issue 14, live: ``stackbot run --mode live`` on ``binanceusdm`` (ccxt's real class) against
the simulator's USDⓈ-M API. The bot sets its leverage and margin mode, opens a short, receives
funding, is killed with ``flatten`` and ends flat; the ledger then equals the venue: no
position on either side, the ledger's cash equals the venue's wallet to the last digit, every
funding payment the venue booked is a ledger cash flow with the same amount, and every trade
a fill with the same price, quantity and commission.

The venue's answers are Binance's USDⓈ-M ones (https://developers.binance.com/docs/
derivatives/usds-margined-futures/): -4046 "No need to change margin type." when the mode is
already set (ccxt ``MarginModeAlreadySet``), conditional orders in the algo service
(``/fapi/v1/algoOrder``) since Binance moved them there, income rows of type FUNDING_FEE.
The simulator's funding interval is ten minutes of its clock (Binance's are 1, 4 or 8 hours)
so that a funding time passes within seconds."""

from __future__ import annotations

import asyncio
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt
import pytest

from bot.sim.binance import build, start_server
from tests.conftest import fetch
from tests.fault_helpers import KEY, LIVE_ENV, SECRET
from tests.live_helpers import spawn_logged, stop, until

SYMBOL = "BTC/USDT:USDT"
CONFIG = """
[exchange]
reconcile_every = 2

[strategy]
fast = 3
slow = 8
shorts = true

[futures]
leverage = 5
margin_mode = "isolated"

[risk]
stale_after_timeframes = 1000
cooldown_candles = 0
consecutive_losses = 1000
daily_loss_limit = 0.9
drawdown_limit = 0.9
max_orders = 1000
max_risk_per_trade = 0.02
"""


# Binance USDⓈ-M "Error Codes" (https://developers.binance.com/docs/derivatives/
# usds-margined-futures/error-code), all HTTP 400 with a {"code","msg"} body, and the class
# ccxt makes of each on a rebased URL (our simulator, a proxy): the linear map must apply
VENUE_ERRORS = [
    ("POST", "order", -2019, "Margin is insufficient.", "InsufficientFunds"),
    ("POST", "order", -2022, "ReduceOnly Order is rejected.", "InvalidOrder"),
    ("POST", "algoOrder", -2021, "Order would immediately trigger.", "OrderImmediatelyFillable"),
    ("POST", "marginType", -4046, "No need to change margin type.", "MarginModeAlreadySet"),
]


@pytest.mark.parametrize(("method", "path", "code", "msg", "ccxt_class"), VENUE_ERRORS)
def test_usdm_error_bodies_map_to_their_ccxt_classes_on_a_rebased_url(
        method: str, path: str, code: int, msg: str, ccxt_class: str) -> None:
    from bot.config import ExchangeSettings
    from bot.exchange.client import make_exchange

    ex = make_exchange(ExchangeSettings(name="binanceusdm", url="http://127.0.0.1:9"),
                       with_ws=False, swaps=True)
    body = json.dumps({"code": code, "msg": msg})
    with pytest.raises(ccxt.BaseError) as raised:
        ex.handle_errors(400, "Bad Request", f"http://127.0.0.1:9/fapi/v1/{path}", method, {},
                         body, json.loads(body), {}, "")
    assert type(raised.value).__name__ == ccxt_class


async def test_live_short_funding_and_flatten_end_with_ledger_equal_to_venue(
        fresh_db: str, tmp_path: Path, reaper: list[Any]) -> None:
    from bot.ledger.migrate import upgrade
    from bot.ledger.repository import make_engine

    engine = make_engine(fresh_db)
    await upgrade(engine)
    await engine.dispose()
    sim = build([SYMBOL], "1m", speed=120.0, history=300, seed=5, future=20_000)
    venue = sim.open_futures(KEY, SECRET, "10000", funding_rate="0.0001",
                             funding_interval_ms=10 * 60_000)
    runner, port = await start_server(sim)
    config = tmp_path / "perp.toml"
    config.write_text(CONFIG)
    instance = "perp"
    account = f"{instance}:live:binanceusdm"
    common = ["--db", fresh_db, "--data-dir", str(tmp_path), "--instance", instance]
    cmd = [sys.executable, "-m", "bot", "run", "--mode", "live", "--confirm-live",
           "--exchange", "binanceusdm", "--symbols", SYMBOL, "--timeframe", "1m",
           "--exchange-url", f"http://127.0.0.1:{port}", "--feed", "rest",
           "--poll-interval", "0.1", "--config", str(config), *common]
    log = tmp_path / "bot.log"
    proc = await spawn_logged(cmd, log, **LIVE_ENV)
    reaper.append(proc)
    try:
        async def short_with_funding() -> bool:
            assert proc.returncode is None, log.read_text()[-4000:]
            rows = await fetch(fresh_db, "SELECT amount FROM cash_flows WHERE account=$1 AND "
                               "amount > 0", account)
            held = venue.positions.get("BTCUSDT")
            return bool(rows) and held is not None and held.amt < 0

        try:
            await until(short_with_funding, timeout=150)
        except AssertionError:  # say which part never came (a CI run once missed it)
            flows = await fetch(fresh_db, "SELECT amount FROM cash_flows WHERE account=$1",
                                account)
            orders = await fetch(fresh_db, "SELECT side, status, reduce_only FROM orders "
                                 "WHERE account=$1", account)
            held = venue.positions.get("BTCUSDT")
            raise AssertionError(
                f"no short held after a funding receipt within 150 s: venue position "
                f"{held.amt if held else None}, venue trades "
                f"{[(t['side'], t['qty']) for t in venue.trades][-20:]}, venue funding "
                f"{[r['income'] for r in venue.income]}, ledger cash flows "
                f"{[r['amount'] for r in flows]}, ledger orders {[tuple(r) for r in orders][-20:]}"
                f"\n{log.read_text()[-6000:]}") from None
        # the venue holds what was asked at start
        assert venue.positions["BTCUSDT"].leverage == 5
        assert venue.positions["BTCUSDT"].isolated
        kill = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "kill", "--level", "flatten", "--reason",
            "perpetuals drill", "--mode", "live", "--exchange", "binanceusdm", *common,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(kill.communicate(), 60)
        assert kill.returncode == 0, out.decode()

        seen: dict[str, Any] = {}

        async def flat_and_equal() -> bool:
            assert proc.returncode is None, log.read_text()[-4000:]
            pos = await fetch(fresh_db, "SELECT quantity FROM positions WHERE account=$1",
                              account)
            cash = await fetch(fresh_db, "SELECT cash FROM accounts WHERE account=$1", account)
            seen.update(ledger_positions=[r["quantity"] for r in pos],
                        venue_positions={k: p.amt for k, p in venue.positions.items()},
                        ledger_cash=cash[0]["cash"], venue_wallet=venue.wallet,
                        venue_algos=[a.status for a in venue.algos.values()])
            return (all(p.amt == 0 for p in venue.positions.values())
                    and all(r["quantity"] == 0 for r in pos)
                    and "NEW" not in seen["venue_algos"]
                    and Decimal(cash[0]["cash"]) == venue.wallet)

        try:
            await until(flat_and_equal, timeout=90)
        except AssertionError:
            raise AssertionError(f"not flat and equal: {seen}\n"
                                 f"{log.read_text()[-6000:]}") from None
        await stop(proc, log)
    finally:
        if proc.returncode is None:
            proc.kill()
        await runner.cleanup()
    text = log.read_text()
    assert "Traceback" not in text and KEY not in text and SECRET not in text
    state = await fetch(fresh_db, "SELECT payload FROM audit_events WHERE account=$1 AND "
                        "kind='risk.state_changed' ORDER BY seq", account)
    assert any("HALTED" in str(r["payload"]) for r in state)
    # every funding payment the venue booked is in the ledger, same id and amount
    flows = await fetch(fresh_db, "SELECT flow_id, amount FROM cash_flows WHERE account=$1",
                        account)
    ledger_flows = {r["flow_id"]: Decimal(r["amount"]) for r in flows}
    venue_flows = {f"funding:{r['tranId']}": Decimal(r["income"]) for r in venue.income}
    assert ledger_flows == venue_flows and any(v > 0 for v in venue_flows.values())
    events = await fetch(fresh_db, "SELECT count(*) AS n FROM audit_events WHERE account=$1 "
                         "AND kind='funding.booked'", account)
    assert events[0]["n"] == len(venue_flows)
    # every venue trade is a ledger fill with the same price, quantity and commission
    fills = await fetch(fresh_db, "SELECT price, quantity, fee FROM fills WHERE account=$1",
                        account)
    ours = sorted((Decimal(r["price"]), Decimal(r["quantity"]), Decimal(r["fee"]))
                  for r in fills)
    theirs = sorted((Decimal(t["price"]), Decimal(t["qty"]), Decimal(t["commission"]))
                    for t in venue.trades)
    assert ours == theirs and len(ours) >= 2
    sells = [t for t in venue.trades if t["side"] == "SELL"]
    assert sells, "no short was opened"


def test_perpetual_positions_are_reconciled_against_the_venues_not_balances() -> None:
    from bot.domain import VenueState
    from bot.reconcile import reconcile

    # a short at the venue: no BTC balance exists, the position is -0.01 contracts
    state = VenueState({"USDT": Decimal("1000")}, (), {SYMBOL: Decimal("30000")},
                       {SYMBOL: Decimal("-0.010")}, {SYMBOL: Decimal("29000")})
    agree = reconcile([SYMBOL], "USDT", {SYMBOL: Decimal("-0.01")}, Decimal("1000"), set(),
                      state)
    assert agree.agree, agree.problems
    wrong = reconcile([SYMBOL], "USDT", {SYMBOL: Decimal("0.01")}, Decimal("1000"), set(),
                      state)
    assert wrong.problems == (f"{SYMBOL}: ledger holds 0.01, venue -0.010",)
    # an account's first start adopts the venue's short at its entry price, not the last price
    first = reconcile([SYMBOL], "USDT", {}, Decimal("0"), set(), state, first_run=True)
    assert first.adopted_positions == {SYMBOL: (Decimal("-0.010"), Decimal("29000"))}


def test_a_venue_liquidation_price_nearer_than_the_ledgers_is_a_disagreement() -> None:
    """The guard placed the stop by the ledger's liquidation price; a venue that would
    liquidate nearer the entry (brackets, fees or leverage it applies its own way) makes that
    stop unsafe: the books disagree, so entries stay blocked until someone looks."""
    from bot.domain import VenueState
    from bot.reconcile import reconcile

    def verdict(qty: str, ours: str, theirs: str) -> tuple[str, ...]:
        state = VenueState({"USDT": Decimal(1000)}, (), {}, {SYMBOL: Decimal(qty)}, {},
                           (), {SYMBOL: Decimal(theirs)})
        return reconcile([SYMBOL], "USDT", {SYMBOL: Decimal(qty)}, Decimal(1000), set(),
                         state, liquidations={SYMBOL: Decimal(ours)}).problems

    assert verdict("0.01", "28000", "28100") == ()  # within 0.5 %: rounding
    assert verdict("0.01", "28000", "26000") == ()  # farther from the entry: the stop is safe
    assert verdict("0.01", "28000", "0") == ()  # the venue shows none
    [problem] = verdict("0.01", "28000", "28500")  # a long liquidated higher up
    assert "28500" in problem and "28000" in problem and SYMBOL in problem
    assert verdict("-0.01", "32000", "32100") == ()
    assert len(verdict("-0.01", "32000", "31500")) == 1  # a short liquidated lower down


async def test_funding_history_is_read_once_from_the_newest_payment_the_ledger_holds() -> None:
    """The broker's funding cursor: each venue payment comes back once; a broker restored
    with the ledger's newest payment reads none of the old ones again, and one restored from
    before them reads them all (the ledger's flow ids then refuse a second booking)."""
    from bot.brokers.live import LiveBroker
    from bot.clock import WallClock
    from bot.config import ExchangeSettings
    from bot.exchange.client import make_exchange
    from bot.sim.usdm_book import SimPosition

    sim = build([SYMBOL], "1m", speed=120.0, history=300, seed=5)
    venue = sim.open_futures(KEY, SECRET, "10000", funding_interval_ms=60_000)
    runner, port = await start_server(sim)
    cfg = ExchangeSettings(name="binanceusdm", url=f"http://127.0.0.1:{port}",
                           api_key=KEY, secret=SECRET)  # type: ignore[arg-type]
    exchanges = []

    async def broker(since: int) -> LiveBroker:
        ex = make_exchange(cfg, with_ws=False, swaps=True)
        exchanges.append(ex)
        b = LiveBroker(ex, WallClock(), "USDT")
        await b.markets([SYMBOL])
        b.restore([], [], Decimal(0), since)
        return b

    try:
        start = sim.clock.now_ms()
        first = await broker(start)
        venue.settle()
        venue.positions["BTCUSDT"] = SimPosition(Decimal("-0.010"), Decimal("30000"), 5)
        await asyncio.sleep(1.2)  # two funding times of the simulator's clock
        state, _ = await first.venue_state([SYMBOL])  # type: ignore[misc]
        flows = state.cash_flows
        assert len(flows) >= 2 and all(f.amount > 0 for f in flows)  # a short receives
        assert {f.flow_id for f in flows} == {f"funding:{r['tranId']}" for r in venue.income}
        assert [f.amount for f in flows] == [Decimal(r["income"]) for r in venue.income]
        assert state.positions == {SYMBOL: Decimal("-0.010")}
        assert state.liquidations == {SYMBOL: Decimal(0)}  # Binance's "0": none shown
        venue.positions["BTCUSDT"].liquidation_price = Decimal("45000.5")
        shown, _ = await first.venue_state([SYMBOL])  # type: ignore[misc]
        assert shown.liquidations == {SYMBOL: Decimal("45000.5")}
        flows += shown.cash_flows  # funding times may pass meanwhile: booked the same way
        venue.positions["BTCUSDT"].amt = Decimal(0)  # flat: no more payments
        again, _ = await first.venue_state([SYMBOL])  # type: ignore[misc]
        assert again.cash_flows == ()
        assert again.positions == {}
        newest = max(f.ts for f in flows)
        restored, _ = await (await broker(newest)).venue_state([SYMBOL])  # type: ignore[misc]
        assert restored.cash_flows == ()
        older, _ = await (await broker(start)).venue_state([SYMBOL])  # type: ignore[misc]
        assert [f.flow_id for f in older.cash_flows] == [f.flow_id for f in flows]
    finally:
        for ex in exchanges:
            await ex.close()
        await runner.cleanup()


async def test_paper_perpetuals_book_the_venues_funding_once_across_a_restart(
        fresh_db: str, tmp_path: Path, reaper: list[Any]) -> None:
    """Paper trading on the venue's live data: each funding time the venue publishes
    (``/fapi/v1/fundingRate``) reaches the paper venue before the first candle after it and is
    booked as size x mark x rate; a restart books none twice (the ledger's newest payment
    bounds what the paper venue takes)."""
    from bot.ledger.migrate import upgrade
    from bot.ledger.repository import make_engine

    engine = make_engine(fresh_db)
    await upgrade(engine)
    await engine.dispose()
    sim = build([SYMBOL], "1m", speed=120.0, history=300, seed=5, future=20_000)
    venue = sim.open_futures(KEY, SECRET, "0", funding_rate="0.0001",
                             funding_interval_ms=5 * 60_000)
    runner, port = await start_server(sim)
    config = tmp_path / "paper.toml"
    config.write_text(CONFIG)
    account = "pperp:paper:binanceusdm"
    cmd = [sys.executable, "-m", "bot", "run", "--mode", "paper", "--exchange", "binanceusdm",
           "--symbols", SYMBOL, "--timeframe", "1m", "--exchange-url",
           f"http://127.0.0.1:{port}", "--feed", "rest", "--poll-interval", "0.1",
           "--config", str(config), "--db", fresh_db, "--data-dir", str(tmp_path),
           "--instance", "pperp"]

    async def flows() -> list[dict[str, Any]]:
        return await fetch(fresh_db, "SELECT flow_id, amount, rate, mark, notional, ts FROM "
                           "cash_flows WHERE account=$1 ORDER BY ts", account)

    try:
        for run in range(2):
            log = tmp_path / f"bot{run}.log"
            proc = await spawn_logged(cmd, log)
            reaper.append(proc)
            before = len(await flows())

            async def more() -> bool:
                assert proc.returncode is None, log.read_text()[-4000:]  # noqa: B023
                return len(await flows()) >= before + 2  # noqa: B023

            await until(more, timeout=120)
            await stop(proc, log)
            assert "Traceback" not in log.read_text()
    finally:
        await runner.cleanup()
    rows = await flows()
    assert len({r["flow_id"] for r in rows}) == len(rows)  # none booked twice
    for r in rows:
        assert r["rate"] == Decimal("0.0001")
        assert r["ts"].timestamp() * 1000 % (5 * 60_000) == 0  # at the venue's funding times
        # to the last unit of 1e-8: the venue rounds rate x its own notional half-up, and the
        # notional stored here is rounded to 6 places, so at an exact half of the 8th place
        # (CI saw 2295.752250 x 0.0001) the two roundings may differ by that one unit
        expected = Decimal(r["notional"]) * r["rate"]
        assert abs(abs(r["amount"]) - expected) <= Decimal("0.00000001"), (r, expected)
        assert r["notional"] > 0 and r["mark"] > 0
    # the side: the position held at each funding time, from the fills before it (a fill is
    # stamped with its candle's open; funding comes before the candle opening at its time)
    fills = await fetch(fresh_db, "SELECT side, quantity, ts FROM fills WHERE account=$1",
                        account)
    for r in rows:
        held = sum((f["quantity"] if f["side"] == "buy" else -f["quantity"])
                   for f in fills if f["ts"] < r["ts"])
        assert held != 0 and abs(held) * r["mark"] == r["notional"], (
            r, [(f["ts"], f["side"], f["quantity"]) for f in fills
                if abs((f["ts"] - r["ts"]).total_seconds()) < 400])
        assert (r["amount"] < 0) == (held > 0)  # a positive rate: longs pay, shorts receive
        # at the venue's mark for that time (its fundingRate row says), not a later price
        assert r["mark"] == venue._price("BTCUSDT", int(r["ts"].timestamp() * 1000))
    # none missed: every funding time from the first to the last booked, the restart's
    # downtime included, on which a position was held, has its payment
    booked = {int(r["ts"].timestamp() * 1000) for r in rows}
    for t in range(min(booked), max(booked) + 1, 5 * 60_000):
        held = sum((f["quantity"] if f["side"] == "buy" else -f["quantity"])
                   for f in fills if f["ts"].timestamp() * 1000 < t)
        assert (t in booked) == (held != 0), (t, held, sorted(booked))
