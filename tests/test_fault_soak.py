"""Acceptance 1 of issue 5: a live-mode session (``stackbot run --mode live``, a subprocess)
against the simulator with at least 1,000 injected faults of every kind. Afterwards: no client
order id twice at the venue, no venue order unknown to the ledger, ledger positions and cash
equal to the venue's balances, an intact audit chain, and a bot that never crashed.

``SOAK_FAULTS`` raises the fault target (default 1,000)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.sim.binance import SimBinance, build, start_server
from bot.sim.faults import KINDS, FaultPlan
from tests.conftest import fetch
from tests.fault_helpers import (
    KEY, LIVE_ENV, SECRET, SYMBOLS, assert_no_secrets, check_books, live_cmd, live_config,
)
from tests.live_helpers import spawn_logged, stop, until

FAULTS = [
    # REST, every endpoint (reads are retried, writes resolved by client id)
    "rate_limit=0.05", "ban=0.02", "server_error=0.06", "slow=0.04", "timeout=0.02",
    "reset=0.05", "lost=0.05",
    # order placement
    "insufficient_funds=0.12", "reject=0.12", "partial_fill=0.3",
    # kline websocket pushes
    "duplicate=0.08", "late=0.25", "out_of_order=0.25", "ws_drop=0.003",
]


@pytest.fixture
async def faulty_venue() -> AsyncIterator[tuple[SimBinance, int]]:
    sim = build(list(SYMBOLS), "1m", speed=120.0, history=300, seed=5)
    sim.open_account(KEY, SECRET, {"USDT": "10000"})
    sim.faults = FaultPlan.from_specs(FAULTS, seed=11)
    sim.faults.enabled = False
    sim.faults.hold_s = 1.5  # the bot waits 1 s
    sim.faults.slow_s = 0.3
    sim.faults.retry_after_s = 1
    sim.ws_push_s = 0.04
    assert sim.account is not None
    sim.account.faults = sim.faults
    runner, port = await start_server(sim)
    yield sim, port
    await runner.cleanup()


@pytest.mark.timeout(900)  # a long session by design
async def test_live_session_survives_a_thousand_faults(
        faulty_venue: tuple[SimBinance, int], fresh_db: str, tmp_path: Path,
        reaper: list[Any]) -> None:
    from bot.ledger.migrate import upgrade
    from bot.ledger.repository import make_engine

    engine = make_engine(fresh_db)
    await upgrade(engine)
    await engine.dispose()
    sim, port = faulty_venue
    target = int(os.environ.get("SOAK_FAULTS", "1000"))
    account = "soak:live:binance"
    log = tmp_path / "bot.log"
    proc = await spawn_logged(live_cmd(port, fresh_db, tmp_path, "soak", live_config(tmp_path)),
                              log, **LIVE_ENV)
    reaper.append(proc)

    async def started() -> bool:
        rows = await fetch(fresh_db, "SELECT count(*) AS n FROM audit_events WHERE kind = "
                           "'reconcile.adopted'")
        return rows[0]["n"] == 1 or proc.returncode is not None

    await until(started, 60)
    assert proc.returncode is None, log.read_text()[-3000:]
    sim.faults.enabled = True
    t0 = time.monotonic()

    async def enough() -> bool:
        assert proc.returncode is None, "the bot died during the soak"
        kinds_seen = all(sim.faults.counts[k] > 0 for k in KINDS)
        return sim.faults.total >= target and kinds_seen

    try:
        await until(enough, timeout=max(480.0, target * 0.45), every=0.5)
    except AssertionError:
        raise AssertionError(f"not enough faults: {dict(sim.faults.counts)}") from None
    soak_s = time.monotonic() - t0
    sim.faults.enabled = False
    # settle: a few clean candle steps so doubts resolve and a reconciliation runs
    n0 = await fetch(fresh_db, "SELECT count(*) AS n FROM audit_events WHERE kind LIKE "
                     "'reconcile.%'")
    await asyncio.sleep(1.0)
    await until(lambda: _quiet(sim), timeout=30, every=0.5)
    await asyncio.sleep(8 * 0.5)
    await stop(proc, log)
    assert "Traceback" not in log.read_text()
    [run] = await fetch(fresh_db, "SELECT status, summary FROM runs WHERE account=$1", account)
    assert run["status"] == "stopped"
    assert_no_secrets(log)
    counts = await check_books(sim, fresh_db, account)
    assert counts["venue_orders"] >= 10 and counts["trades"] >= 5, counts
    mismatches = await fetch(fresh_db, "SELECT payload FROM audit_events WHERE kind = "
                             "'reconcile.cash_adopted'")
    assert mismatches == []  # cash never drifted upward either
    print(f"\nsoak: {sim.faults.total} faults in {soak_s:.0f}s "
          f"({dict(sorted(sim.faults.counts.items()))}); {counts}; "
          f"reconcile events before settling: {n0[0]['n']}")


async def _quiet(sim: SimBinance) -> bool:
    """No order at the venue still open except resting stops (placed by the bot)."""
    assert sim.account is not None
    return all(o.type == "STOP_LOSS" for o in sim.account.orders.values()
               if o.status in ("NEW", "PARTIALLY_FILLED"))
