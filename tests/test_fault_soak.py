"""A live-mode session (``stackbot run --mode live``, a subprocess) against the simulator through
at least 1,000 injected faults, every kind present, and each of the responses Binance documents
for its failures at least 20 times: -1000 (500), -1001 (503), -1003 (429 and 418 with
Retry-After), -1007 (503; the order carried out or not), -1021 (a real clock step at the
venue), -2010 insufficient balance, -2011 on a cancel that raced a fill, and a proxy's bare
5xx (https://developers.binance.com/docs/binance-spot-api-docs/errors and
.../rest-api/http-return-codes). Afterwards: no client order id twice at the venue, no venue
order unknown to the ledger, every order's audit row committed before the venue accepted it
(checked by the venue), ledger positions and cash equal to the venue's balances, an intact
audit chain, and a bot that never crashed.

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
    KEY,
    LIVE_ENV,
    SECRET,
    SYMBOLS,
    AuditWitness,
    assert_no_secrets,
    check_books,
    live_cmd,
    live_config,
    reconciled_after,
    settled,
    unseen_fills,
)
from tests.live_helpers import spawn_logged, stop, until

# the failures Binance documents, each to be seen at least MIN_EACH times
DOCUMENTED = ("unknown_error", "disconnected", "rate_limit", "ban", "send_unknown",
              "clock_skew", "insufficient_funds", "cancel_race", "server_error")
MIN_EACH = 20

FAULTS = [
    # REST, every endpoint (reads are retried, writes resolved by client id)
    "rate_limit=0.03", "ban=0.025", "unknown_error=0.03", "disconnected=0.03",
    "send_unknown=0.03", "server_error=0.03", "clock_skew=0.02", "slow=0.03", "timeout=0.015",
    "reset=0.03", "lost=0.03",
    # order placement and cancels
    "insufficient_funds=0.25", "reject=0.1", "partial_fill=0.3", "cancel_race=0.9",
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
    witness = AuditWitness(sim, fresh_db)
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
        documented = all(sim.faults.counts[k] >= MIN_EACH for k in DOCUMENTED)
        return sim.faults.total >= target and kinds_seen and documented

    try:
        await until(enough, timeout=max(600.0, target * 0.6), every=0.5)
    except AssertionError:
        raise AssertionError(f"not enough faults: {dict(sim.faults.counts)}") from None
    soak_s = time.monotonic() - t0
    sim.faults.enabled = False
    # settle: a few clean candle steps so doubts resolve and a reconciliation runs
    n0 = await fetch(fresh_db, "SELECT count(*) AS n FROM audit_events WHERE kind LIKE "
                     "'reconcile.%'")
    await asyncio.sleep(1.0)
    await until(lambda: settled(sim), timeout=30, every=0.5)
    await asyncio.sleep(8 * 0.5)
    await stop(proc, log)
    assert "Traceback" not in log.read_text()
    [run] = await fetch(fresh_db, "SELECT status, summary FROM runs WHERE account=$1", account)
    assert run["status"] == "stopped"
    # A resting stop may have filled after the bot's last look (once on CI: the ledger held
    # 0.08764 BTC the venue had sold). Freeze the market; whatever the ledger misses must be
    # such a stop fill and nothing else, and the next start must book it before it agrees.
    sim.clock.freeze()
    assert sim.account is not None
    sim.account.match()
    unseen = await unseen_fills(sim, fresh_db, account)
    assert set(unseen) <= {"STOP_LOSS"}, unseen
    if unseen:
        proc = await spawn_logged(live_cmd(port, fresh_db, tmp_path, "soak",
                                           live_config(tmp_path)), log, **LIVE_ENV)
        reaper.append(proc)
        await until(lambda: reconciled_after(fresh_db, account, 1), timeout=60, every=0.5)
        await stop(proc, log)
        assert "Traceback" not in log.read_text()
    assert_no_secrets(log)
    counts = await check_books(sim, fresh_db, account, witness)
    # every insufficient-balance rejection the bot received asked for a reconciliation (the
    # venue also counts answers that went to a connection the bot had given up on). Compared
    # order by order, not by count: counting failed once (47 requests, 46 rows) on a clean
    # CI run and passed on the rerun. One way to get there: a decision sent again after a
    # rejection keeps its deterministic client id and asks again, while its row, terminal
    # already, is not rewritten.
    booked = await fetch(fresh_db, "SELECT client_order_id AS id FROM orders WHERE account = "
                         "$1 AND status = 'rejected' AND status_reason LIKE "
                         "'InsufficientFunds%'", account)
    asked = await fetch(fresh_db, "SELECT DISTINCT payload->>'order' AS id FROM audit_events "
                        "WHERE kind = 'reconcile.requested' AND payload->>'why' LIKE "
                        "'InsufficientFunds%'")
    assert {r["id"] for r in asked} == {r["id"] for r in booked} and booked, (asked, booked)
    assert counts["venue_orders"] >= 10 and counts["trades"] >= 5, counts
    mismatches = await fetch(fresh_db, "SELECT payload FROM audit_events WHERE kind = "
                             "'reconcile.cash_adopted'")
    assert mismatches == []  # cash never drifted upward either
    print(f"\nsoak: {sim.faults.total} faults in {soak_s:.0f}s "
          f"({dict(sorted(sim.faults.counts.items()))}); {counts}; "
          f"reconcile events before settling: {n0[0]['n']}; stop fills unseen at the stop: "
          f"{len(unseen)}")

