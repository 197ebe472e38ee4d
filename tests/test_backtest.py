"""Backtests through the one engine: the ledger reconciles, bad files write nothing."""

from __future__ import annotations

import json
from decimal import Decimal as D
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.app import backtest
from bot.cli import app
from bot.config import load_settings
from tests.conftest import fetch, shared_file
from tests.helpers import write_series


async def reconcile(url: str, account: str, summary: dict[str, object],
                    last_close: dict[str, float]) -> None:
    """Sum of fills = positions; cash + marked positions = the summary's final equity."""
    fills = await fetch(
        url, "SELECT symbol, side, quantity, price, fee FROM fills WHERE account=$1", account
    )
    positions = {
        r["symbol"]: r["quantity"]
        for r in await fetch(
            url, "SELECT symbol, quantity FROM positions WHERE account=$1", account
        )
    }
    [acct] = await fetch(url, "SELECT cash, starting_cash FROM accounts WHERE account=$1", account)
    held: dict[str, D] = {}
    cash = acct["starting_cash"]
    for f in fills:
        sign = 1 if f["side"] == "buy" else -1
        held[f["symbol"]] = held.get(f["symbol"], D(0)) + sign * f["quantity"]
        cash -= sign * f["quantity"] * f["price"] + f["fee"]
    assert {s: q for s, q in held.items() if q} == {s: q for s, q in positions.items() if q}
    assert cash == acct["cash"] == D(str(summary["cash"]))
    marked = sum((q * D(repr(last_close[s])) for s, q in positions.items()), D(0))
    assert cash + marked == D(str(summary["final_equity"]))
    assert int(summary["trades"]) == len(fills)  # type: ignore[call-overload]


async def test_backtest_ledger_reconciles_two_symbols(tmp_path: Path, pg_url: str) -> None:
    files = [
        write_series(tmp_path, "BTC/USDT", 600, seed=1),
        write_series(tmp_path, "ETH/USDT", 600, seed=2, fmt="json"),
    ]
    settings = load_settings(overrides={"database": {"url": pg_url}, "timeframe": "1h"}, environ={})
    outcome = await backtest(settings, files, None, None, None)
    s = outcome.summary
    assert s["candles"] == 600 + 599 and s["status"] == "completed"
    assert int(s["trades"]) > 10  # type: ignore[call-overload]
    from bot.feeds.files import load_candle_file

    last = {
        sym: load_candle_file(f, "1h").candles[-1].close
        for sym, f in zip(["BTC/USDT", "ETH/USDT"], files, strict=False)
    }
    await reconcile(pg_url, outcome.account, s, last)
    # every order and fill carries its audit events, and the signals name their model
    orders = await fetch(
        pg_url,
        "SELECT client_order_id, model_version FROM orders WHERE account=$1",
        outcome.account,
    )
    audited = {
        r["entity_id"]
        for r in await fetch(
            pg_url,
            "SELECT entity_id FROM audit_events WHERE account=$1 AND kind='order.created'",
            outcome.account,
        )
    }
    assert orders and {o["client_order_id"] for o in orders} == audited
    assert all(o["model_version"] == "ema_cross-12-26" for o in orders)
    booked = await fetch(
        pg_url,
        "SELECT count(*) AS n FROM audit_events WHERE account=$1 AND kind='fill.booked'",
        outcome.account,
    )
    assert booked[0]["n"] == s["trades"]
    sigs = await fetch(
        pg_url, "SELECT count(*) AS n FROM signals WHERE account=$1", outcome.account
    )
    assert sigs[0]["n"] == s["signals"]


async def test_start_end_window(tmp_path: Path, pg_url: str) -> None:
    f = write_series(tmp_path, "BTC/USDT", 300)
    settings = load_settings(overrides={"database": {"url": pg_url}, "timeframe": "1h"}, environ={})
    from bot.feeds.files import load_candle_file

    c = load_candle_file(f, "1h").candles
    outcome = await backtest(settings, [f], None, c[100].ts, c[200].ts)
    assert outcome.summary["candles"] == 100
    assert outcome.summary["first_ts"] == c[100].close_ts


@pytest.mark.parametrize(
    "fault,reason",
    [
        ("1600005600000,100,102,99,nan,10", "close is nan"),
        ("1600002000000,100,102,99,101,10", "duplicate timestamp"),
    ],
)
def test_malformed_file_fails_and_writes_nothing(
    tmp_path: Path, pg_url: str, fault: str, reason: str
) -> None:
    import asyncio

    good = write_series(tmp_path, "BTC/USDT", 50)
    bad = tmp_path / "ETH_USDT-1h.csv"
    lines = good.read_text().splitlines()
    bad.write_text("\n".join(lines[:3] + [fault] + lines[3:]) + "\n")
    before = asyncio.run(fetch(pg_url, "SELECT count(*) AS n FROM runs"))[0]["n"]
    result = CliRunner().invoke(
        app,
        ["backtest", "--data", str(good), "--data", str(bad), "--timeframe", "1h", "--db", pg_url],
    )
    assert result.exit_code == 2
    assert str(bad) in result.output and "row 3:" in result.output and reason in result.output
    after = asyncio.run(fetch(pg_url, "SELECT count(*) AS n FROM runs"))[0]["n"]
    assert after == before


def test_real_btc_1h_backtest_reconciles(pg_url: str) -> None:
    """Acceptance: the whole BTC/USDT 1h file (45k candles) through the CLI."""
    import asyncio

    path = shared_file("binance-spot-1h", "BTC_USDT-1h.json")
    result = CliRunner().invoke(
        app, ["backtest", "--data", str(path), "--timeframe", "1h", "--json", "--db", pg_url]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["candles"] == 45_023 and summary["gaps"] == 27
    from bot.feeds.files import load_candle_file

    last = load_candle_file(path, "1h").candles[-1].close
    asyncio.run(reconcile(pg_url, summary["account"], summary, {"BTC/USDT": last}))


def test_real_eight_pairs_with_full_risk_manager(pg_url: str) -> None:
    """Acceptance (issue 4): the summary lists every breaker that fired and every state
    change; the ledger holds their reasons."""
    import asyncio

    files = [
        shared_file("binance-spot-1h", f"{p}_USDT-1h.json")
        for p in ("BTC", "ETH", "BNB", "LTC", "ADA", "XRP", "DOGE", "SOL")
    ]
    args = ["backtest", "--timeframe", "1h", "--json", "--db", pg_url]
    for f in files:
        args += ["--data", str(f)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout[result.stdout.index("{") :])
    assert s["candles"] > 300_000
    assert s["breakers_fired"], "five years of crypto should trip something"
    changes = s["state_changes"]
    assert changes and all({"ts", "from", "to", "by", "reason"} <= set(c) for c in changes)
    rows = asyncio.run(
        fetch(
            pg_url,
            "SELECT payload FROM audit_events WHERE account=$1 AND "
            "kind='risk.state_changed' ORDER BY id",
            s["account"],
        )
    )
    logged = [json.loads(r["payload"]) for r in rows]
    assert [(x["from"], x["to"], x["reason"]) for x in logged] == [
        (c["from"], c["to"], c["reason"]) for c in changes
    ]
    rejected = asyncio.run(
        fetch(
            pg_url,
            "SELECT count(*) AS n FROM audit_events WHERE account=$1 AND kind='risk.rejected'",
            s["account"],
        )
    )
    assert rejected[0]["n"] == s["risk_decisions"].get("rejected", 0)
