"""Perpetual futures on hand-made candles: funding, the liquidation guard, paper liquidation,
and the files a backtest reads beside the candles.

The venue's rules these tests hold us to, from Binance's USDⓈ-M documentation:
- funding = position size x mark price x funding rate; a positive rate means longs pay shorts
  ("Introduction to Binance Futures Funding Rates",
  https://www.binance.com/en/support/faq/360033525031);
- isolated liquidation price, one-way mode: LP = (WB + cum - side*Q*EP) / (Q*MMR - side*Q),
  WB the position's margin ("How to Calculate Liquidation Price of USDⓈ-M Futures Contracts",
  https://www.binance.com/en/support/faq/b3c689c1f50a44cabb3a84e663b81d93); at LP what is
  left of the margin goes to the insurance fund, so the isolated margin is lost whole.
The expected figures below are computed here from those rules, not read back from our code.
"""

from __future__ import annotations

import json
from decimal import Decimal as D
from pathlib import Path

import pytest

from bot.app import backtest
from bot.brokers.paper import PaperBroker, static_markets
from bot.clock import SimulatedClock
from bot.config import load_settings
from bot.domain import (
    Candle,
    FundingRate,
    MarkBar,
    Order,
    OrderStatus,
    OrderType,
    Side,
)
from bot.errors import DataError
from bot.feeds.perpetuals import load_funding_file
from risk.margin import MarginTerms
from tests.conftest import fetch, shared_file

SYM = "BTC/USDT:USDT"
H = 3_600_000
CENT = D("0.01")
T0 = 1_600_000_000_000 // (8 * H) * (8 * H)  # 2020-09-13 08:00 UTC, a funding time


def _payload(row: dict[str, object]) -> dict[str, str]:
    p = row["payload"]
    return json.loads(p) if isinstance(p, str) else p  # type: ignore[return-value]


def order(side: Side, qty: str, cid: str) -> Order:
    return Order(cid, "acct", "run", SYM, side, OrderType.MARKET, D(qty),
                 OrderStatus.PENDING_SUBMIT, 0, 0, 0, "v", "test")


@pytest.mark.parametrize("side", [Side.BUY, Side.SELL])
async def test_funding_is_rate_times_notional_at_the_mark(side: Side) -> None:
    b = PaperBroker(static_markets(), SimulatedClock(H), "USDT", D(10000), D(0), D(1),
                    margin=MarginTerms(D(5)))
    await b.markets([SYM])
    await b.submit(order(side, "0.25", f"o-{side.value}"))
    mark = 20123.47
    [fill_update] = await b.on_candle(Candle(SYM, "1h", H, 20000, 20200, 19900, 20150, 500,
                                             MarkBar(20001.5, 20190.0, 19910.0, mark)))
    assert fill_update.order.status is OrderStatus.FILLED
    cash_before = b.cash
    rate = 0.000137
    [flow] = await b.on_funding(FundingRate(SYM, 2 * H, rate))
    # the venue's rule, in exact decimals: size x mark x rate, longs pay a positive rate
    expected = D("0.25") * D("20123.47") * D("0.000137")
    signed = -expected if side is Side.BUY else expected
    assert flow.amount.quantize(CENT) == signed.quantize(CENT)
    assert flow.amount == signed.quantize(D("0.00000001"))
    assert flow.notional == D("0.25") * D("20123.47") and flow.mark == D("20123.47")
    assert b.cash - cash_before == flow.amount
    # a flat account books nothing
    flat = PaperBroker(static_markets(), SimulatedClock(H), "USDT", D(10000))
    await flat.markets([SYM])
    assert await flat.on_funding(FundingRate(SYM, 2 * H, rate)) == []


def _rising_then_crash(n: int, crash_at: int, drop: float) -> list[list[float]]:
    """A slow climb with 1 % ranges (the EMA baseline goes long), then one candle whose low
    is ``drop`` below its open."""
    rows, price = [], 100.0
    for i in range(n):
        o = price
        c = o * 1.001
        h, low = max(o, c) * 1.005, min(o, c) * 0.995
        if i == crash_at:
            c = o * (1 - drop * 0.8)
            h, low = o * 1.001, o * (1 - drop)
        rows.append([T0 + i * H, o, h, low, c, 1_000_000.0])
        price = c
    return rows


def _write(tmp: Path, rows: list[list[float]], rates: list[tuple[int, float]]) -> Path:
    path = tmp / "BTC_USDT_USDT-1h-futures.csv"
    path.write_text("timestamp,open,high,low,close,volume\n"
                    + "".join(",".join(repr(v) for v in r) + "\n" for r in rows))
    (tmp / "BTC_USDT_USDT-1h-funding_rate.csv").write_text(
        "timestamp,open,high,low,close,volume\n"
        + "".join(f"{ts},{rate!r},0,0,0,0\n" for ts, rate in rates))
    return path


async def _run(tmp: Path, pg_url: str, guard: bool) -> tuple[dict[str, object], str]:
    # the baseline buys at candle 26's open; two candles later, before its trailing stop has
    # climbed above the liquidation price, the price falls 10 %
    rows = _rising_then_crash(31, 28, 0.10)
    rates = [(T0 + k * H, 0.0001) for k in range(1, 31)]  # hourly, so the long pays some
    path = _write(tmp, rows, rates)
    settings = load_settings(overrides={
        "database": {"url": pg_url}, "timeframe": "1h",
        "futures": {"leverage": 50},
        "risk": {"liquidation_guard": guard},
        "paper": {"slippage_bps": "0"},
    }, environ={})
    out = await backtest(settings, [path], None, None, None)
    return out.summary, str(out.summary["account"])


async def test_guard_off_a_crash_liquidates_at_the_venues_price_with_fees(
        tmp_path: Path, pg_url: str) -> None:
    summary, account = await _run(tmp_path, pg_url, guard=False)
    assert summary["liquidations"] == 1
    fills = await fetch(pg_url, "SELECT f.side, f.quantity, f.price, f.fee, o.model_version, "
                        "f.ts FROM fills f JOIN orders o USING (client_order_id) "
                        "WHERE f.account=$1 ORDER BY f.ts, f.fill_id", account)
    liq = [f for f in fills if f["model_version"] == "venue"]
    assert len(liq) == 1
    entry = [f for f in fills if f["ts"] < liq[0]["ts"]][-1]
    assert entry["side"] == "buy" and liq[0]["side"] == "sell"
    q, ep = entry["quantity"], entry["price"]
    assert liq[0]["quantity"] == q
    # Binance's isolated long at 50x, first bracket (MMR 0.4 %, cum 0)
    wb = q * ep / D(50)
    mmr = D("0.004")
    lp = (wb + 0 - q * ep) / (q * mmr - q)
    assert liq[0]["price"].quantize(CENT) == lp.quantize(CENT)
    assert liq[0]["fee"].quantize(CENT) == (q * lp * mmr).quantize(CENT)
    # the trade lost the whole isolated margin plus the entry's taker fee
    realized = (liq[0]["price"] - ep) * q - liq[0]["fee"] - entry["fee"]
    assert realized.quantize(CENT) == (-wb - entry["fee"]).quantize(CENT)
    [order_row] = await fetch(pg_url, "SELECT status, reason, reduce_only FROM orders "
                              "WHERE account=$1 AND model_version='venue'", account)
    assert order_row["status"] == "filled" and order_row["reduce_only"]
    assert order_row["reason"].startswith("liquidation: mark crossed")
    # the entry was approved with the guard off, and said so
    approved = await fetch(pg_url, "SELECT payload FROM audit_events WHERE account=$1 AND "
                           "kind='risk.approved' ORDER BY seq", account)
    assert any("liquidation guard OFF" in _payload(a)["reason"] for a in approved)


async def test_funding_is_a_ledger_cash_flow_with_its_audit_event(
        tmp_path: Path, pg_url: str) -> None:
    summary, account = await _run(tmp_path, pg_url, guard=False)
    flows = await fetch(pg_url, "SELECT flow_id, amount, rate, mark, notional, ts FROM "
                        "cash_flows WHERE account=$1 ORDER BY ts", account)
    assert flows, "the position was open over funding times: funding must be booked"
    fills = await fetch(pg_url, "SELECT side, quantity, ts FROM fills WHERE account=$1",
                        account)
    sides = set()
    for f in flows:
        held = sum((x["quantity"] * (1 if x["side"] == "buy" else -1) for x in fills
                    if x["ts"] < f["ts"]), D(0))  # funding at T comes before T's fills
        assert held != 0
        sides.add(held > 0)
        # a long pays a positive rate, a short receives it
        expected = -f["notional"] * f["rate"] * (1 if held > 0 else -1)
        assert f["amount"].quantize(CENT) == expected.quantize(CENT)
    assert True in sides, "the long held before the crash paid funding"
    events = await fetch(pg_url, "SELECT payload FROM audit_events WHERE account=$1 AND "
                         "kind='funding.booked'", account)
    assert len(events) == len(flows)
    paid = sum((-f["amount"] for f in flows if f["amount"] < 0), D(0))
    received = sum((f["amount"] for f in flows if f["amount"] > 0), D(0))
    assert D(str(summary["funding_paid"])) == paid
    assert D(str(summary["funding_received"])) == received
    assert summary["funding_events"] == len(flows)


async def test_guard_on_refuses_the_entry_whose_stop_is_past_liquidation(
        tmp_path: Path, pg_url: str) -> None:
    summary, account = await _run(tmp_path, pg_url, guard=True)
    assert summary["liquidations"] == 0
    assert int(summary["liquidation_guard_rejections"]) > 0  # type: ignore[call-overload]
    rejected = await fetch(pg_url, "SELECT payload FROM audit_events WHERE account=$1 AND "
                           "kind='risk.rejected'", account)
    reasons = [_payload(r)["reason"] for r in rejected]
    guard = [r for r in reasons if r.startswith("liquidation guard:")]
    assert guard and all("ATR apart" in r and "liquidation" in r for r in guard)


def test_malformed_funding_and_mark_files_are_refused_with_file_row_and_reason(
        tmp_path: Path) -> None:
    bad = tmp_path / "BTC_USDT_USDT-1h-funding_rate.csv"
    bad.write_text(f"timestamp,open,high,low,close,volume\n{T0},0.0001,0,0,0,0\n"
                   f"{T0 + 8 * H},nan,0,0,0,0\n")
    with pytest.raises(DataError, match=r"funding_rate.csv: row 2: funding rate is nan"):
        load_funding_file(bad, SYM)
    bad.write_text(f"timestamp,open,high,low,close,volume\n{T0 + 8 * H},0.0001,0,0,0,0\n"
                   f"{T0},0.0001,0,0,0,0\n")
    with pytest.raises(DataError, match=rf"row 2: timestamp {T0} is out of order"):
        load_funding_file(bad, SYM)
    bad.write_text(f"timestamp,open,high,low,close,volume\n{T0},0.5,0,0,0,0\n")
    with pytest.raises(DataError, match=r"row 1: funding rate 0.5 is beyond"):
        load_funding_file(bad, SYM)
    # a mark file is validated like candles: the file, the row and the reason
    rows = _rising_then_crash(5, 99, 0.0)
    candles = tmp_path / "BTC_USDT_USDT-1h-futures.csv"
    candles.write_text("timestamp,open,high,low,close,volume\n"
                       + "".join(",".join(repr(v) for v in r) + "\n" for r in rows))
    mark = tmp_path / "BTC_USDT_USDT-1h-mark.csv"
    mark.write_text(f"timestamp,open,high,low,close,volume\n{T0},100,101,99,100,0\n"
                    f"{T0 + H},100,99,101,100,0\n")
    bad.write_text(f"timestamp,open,high,low,close,volume\n{T0},0.0001,0,0,0,0\n")
    from bot.feeds.series import load_series

    with pytest.raises(DataError, match=r"mark.csv: row 2: high 99.0 is below"):
        load_series([candles], "1h", None)


def test_real_perpetual_files_load_with_marks_and_funding() -> None:
    path = shared_file("binance-usdm-1h", "BTC_USDT_USDT-1h-futures.feather")
    from bot.feeds.series import load_series

    [s] = load_series([path], "1h", ["BTC/USDT:USDT"])
    assert s.symbol == SYM and len(s.funding) > 3000
    marked = [c for c in s.candles if c.mark is not None]
    assert len(marked) > 26_000 and len(marked) < len(s.candles)  # marks from 2019-12-23
    assert all(f.ts % (8 * H) == 0 for f in s.funding[:100])


async def test_an_exit_at_market_fills_at_the_open_before_a_crash_can_liquidate() -> None:
    """A take-profit or signal exit sent at a candle's close fills at the next open; a crash
    later in that candle finds the position already closed (found on the real BTC file: the
    exit had replaced the stop, and the crash liquidated it first)."""
    b = PaperBroker(static_markets(), SimulatedClock(H), "USDT", D(10000), D(0), D(1),
                    margin=MarginTerms(D(50)))
    await b.markets([SYM])
    await b.submit(order(Side.BUY, "1", "entry"))
    await b.on_candle(Candle(SYM, "1h", H, 100, 100.5, 99.5, 100, 1000))
    await b.on_candle(Candle(SYM, "1h", 2 * H, 100, 100.5, 99.8, 100.2, 1000))
    exit_ = Order("exit", "acct", "run", SYM, Side.SELL, OrderType.MARKET, D(1),
                  OrderStatus.PENDING_SUBMIT, 2 * H, 2 * H, 2 * H, "v", "take-profit",
                  reduce_only=True)
    await b.submit(exit_)
    # the next candle opens at 100.2 and falls 10 %: far through the 50x long's liquidation
    updates = await b.on_candle(Candle(SYM, "1h", 3 * H, 100.2, 100.3, 90.0, 91.0, 1000))
    assert b.liquidations == 0
    [done] = [u for u in updates if u.fills]
    assert done.order.client_order_id == "exit" and done.fills[0].price == D("100.2")
    assert b.positions[SYM].quantity == 0


def test_cross_liquidation_counts_the_accounts_other_positions() -> None:
    """Under cross margin a losing position elsewhere eats the wallet behind a new one:
    Binance's cross formula subtracts the others' maintenance margin and adds their unrealized
    P&L. Alone, this BTC long at 20x has no liquidation price; beside an ETH long 800 USDT
    under water it has one, computed here by hand from Binance's formula."""
    from bot.domain import InstrumentKind, MarginMode, MarketSpec
    from risk.margin import cross_others, position_liquidation

    def swap(sym: str) -> MarketSpec:
        return MarketSpec(sym, sym[:3], "USDT", D("0.001"), D("0.1"), kind=InstrumentKind.SWAP,
                          settle="USDT")

    btc, eth = swap("BTC/USDT:USDT"), swap("ETH/USDT:USDT")
    cross = MarginTerms(D(20), MarginMode.CROSS)
    assert position_liquidation(btc, cross, D("0.03"), D(30000), D(1000)) is None
    others = cross_others([(eth, D(1), D(2800), D(2000))])
    assert others == (D(8), D(-800))  # 1 x 2000 x 0.4 % maintenance; (2000 - 2800) x 1
    lp = position_liquidation(btc, cross, D("0.03"), D(30000), D(1000), others)
    # WB 1000, TMM 8, UPNL -800, cum 0, side 1, Q 0.03, EP 30000, MMR 0.4 %
    by_hand = (D(1000) - 8 - 800 + 0 - D("0.03") * 30000) / (D("0.03") * D("0.004") - D("0.03"))
    assert lp == by_hand and D(23000) < lp < D(24000)
    # a short's liquidation price comes down towards its entry the same way
    short_alone = position_liquidation(btc, cross, D("-0.03"), D(30000), D(1000))
    short_beside = position_liquidation(btc, cross, D("-0.03"), D(30000), D(1000), others)
    assert short_alone is not None and short_beside is not None
    assert D(30000) < short_beside < short_alone
    # isolated margin ignores the others: each position stands on its own margin
    isolated = MarginTerms(D(20), MarginMode.ISOLATED)
    assert position_liquidation(btc, isolated, D("0.03"), D(30000), D(1000), others) == \
        position_liquidation(btc, isolated, D("0.03"), D(30000), D(1000))
