"""download (resumable), the embedded database default, and status."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from bot.cli import app
from bot.feeds.files import load_candle_file
from bot.sim.binance import build, start_server
from tests.helpers import write_series


def test_download_is_paginated_closed_only_and_resumable(tmp_path: Path) -> None:
    sim = build(["BTC/USDT"], "1m", speed=1.0, history=2500, seed=5)

    async def go() -> tuple[list[str], list[str]]:
        runner, port = await start_server(sim)
        try:
            args = ["download", "--exchange", "binance", "--symbols", "BTC/USDT",
                    "--timeframe", "1m", "--since", str(sim.clock.origin_ms - 2400 * 60_000),
                    "--out", str(tmp_path), "--exchange-url", f"http://127.0.0.1:{port}"]
            loop = asyncio.get_running_loop()
            first = await loop.run_in_executor(None, lambda: CliRunner().invoke(app, args))
            second = await loop.run_in_executor(None, lambda: CliRunner().invoke(app, args))
            return [first.output, str(first.exit_code)], [second.output, str(second.exit_code)]
        finally:
            await runner.cleanup()

    first, second = asyncio.run(go())
    assert first[1] == "0", first[0]
    path = tmp_path / "BTC_USDT-1m.csv"
    series = load_candle_file(path, "1m")  # validates: sorted, unique, sane
    assert len(series.candles) >= 2399  # more than two pages of 1000
    final = {c.ts: c for c in sim.series["BTCUSDT"]}
    assert all(final[c.ts].close == c.close for c in series.candles)  # closed values only
    assert series.candles[-1].close_ts <= sim.clock.now_ms()
    assert second[1] == "0" and "BTC/USDT: " in second[0]
    again = load_candle_file(path, "1m")
    assert len(again.candles) >= len(series.candles)
    assert [c.ts for c in again.candles[: len(series.candles)]] == [c.ts for c in series.candles]
    added = int(second[0].split("BTC/USDT: ")[1].split()[0])
    assert added <= 2  # only what closed in between, nothing re-written


def test_embedded_database_is_the_default(tmp_path: Path) -> None:
    data = write_series(tmp_path, "BTC/USDT", 200)
    state = tmp_path / "state"
    runner = CliRunner()
    up = runner.invoke(app, ["db", "upgrade", "--data-dir", str(state)])
    assert up.exit_code == 0, up.output
    assert "database at revision" in up.output
    bt = runner.invoke(app, ["backtest", "--data", str(data), "--timeframe", "1h", "--json",
                             "--data-dir", str(state)])
    assert bt.exit_code == 0, bt.output
    summary = json.loads(bt.stdout[bt.stdout.index("{"):])
    assert (state / "postgres" / "PG_VERSION").exists()
    st = runner.invoke(app, ["status", "--json", "--data-dir", str(state)])
    assert st.exit_code == 0, st.output
    report = json.loads(st.stdout[st.stdout.index("{"):])
    assert report["recent runs"][0]["id"] == summary["run_id"]
    assert report["recent runs"][0]["status"] == "completed"
    # the table, at 80 columns, shows the run's id and its account whole
    from bot.cli_common import out

    width, out.width = out.width, 80
    try:
        shown = runner.invoke(app, ["status", "--data-dir", str(state)]).stdout
    finally:
        out.width = width
    run = report["recent runs"][0]
    assert run["id"] in shown and run["account"] in shown, shown


def test_runs_lists_results_with_whole_ids_and_filters_by_mode(tmp_path: Path,
                                                               pg_url: str) -> None:
    """`stackbot runs`: each run with its summary's numbers, newest first, `--mode` filters,
    `--json` for scripts, and at 80 columns the ids are whole (they go into other commands)."""
    runner = CliRunner()
    made = []
    for seed in (1, 2):
        data = write_series(tmp_path, f"S{seed}/USDT", 300, seed=seed)
        bt = runner.invoke(app, ["backtest", "--data", str(data), "--timeframe", "1h",
                                 "--json", "--db", pg_url])
        assert bt.exit_code == 0, bt.output
        made.append(json.loads(bt.stdout[bt.stdout.index("{"):]))
    listed = runner.invoke(app, ["runs", "--json", "--db", pg_url, "--limit", "50"])
    assert listed.exit_code == 0, listed.output
    rows = {r["id"]: r for r in json.loads(listed.stdout[listed.stdout.index("["):])}
    for summary in made:
        row = rows[summary["run_id"]]
        assert row["status"] == "completed" and row["mode"] == "backtest"
        assert row["trades"] == summary["trades"] and row["candles"] == summary["candles"]
        assert row["final_equity"] == summary["final_equity"]
    order = [r["id"] for r in json.loads(listed.stdout[listed.stdout.index("["):])]
    assert order.index(made[1]["run_id"]) < order.index(made[0]["run_id"])  # newest first
    live = runner.invoke(app, ["runs", "--json", "--mode", "live", "--db", pg_url])
    assert all(r["mode"] == "live" for r in json.loads(live.stdout[live.stdout.index("["):]))
    assert made[0]["run_id"] not in live.stdout
    bad = runner.invoke(app, ["runs", "--mode", "sideways", "--db", pg_url])
    assert bad.exit_code == 2 and "expected backtest, paper or live" in bad.output
    from bot.cli_common import out

    width, out.width = out.width, 80
    try:
        shown = runner.invoke(app, ["runs", "--limit", "2", "--db", pg_url]).stdout
    finally:
        out.width = width
    assert made[1]["run_id"] in shown and made[0]["run_id"] in shown, shown
