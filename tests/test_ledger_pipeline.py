"""The backtest ledger (``bot/ledger/pipeline.py``): batches committed by a writer thread, in
order, one transaction each; after a failed batch nothing later is written, and the engine
hears of it at its next commit or flush."""

from __future__ import annotations

import asyncio
import json
import threading
from decimal import Decimal as D

import pytest

from bot.domain import AuditEvent, Fill, Side, UnitOfWork
from bot.errors import LedgerError
from bot.ledger.audit import verify_chain
from bot.ledger.pipeline import PipelinedLedger
from bot.ledger.repository import PostgresLedger, make_engine
from tests.conftest import fetch


def _event(tag: str, i: int) -> UnitOfWork:
    return UnitOfWork(audit=[AuditEvent("test.pipe", "t", f"{tag}-{i}", f"acct-{tag}", "r", i,
                                        {"i": i})])


async def test_batches_commit_in_order_on_the_writer_thread(pg_url: str) -> None:
    inner = PostgresLedger.from_url(pg_url)
    threads: set[str] = set()
    commit = inner.commit

    async def spy(unit: UnitOfWork) -> None:
        threads.add(threading.current_thread().name)
        await asyncio.sleep(0.01)  # slow enough that several batches are handed over at once
        await commit(unit)

    inner.commit = spy  # type: ignore[method-assign]
    led = PipelinedLedger(inner, batch=7, depth=3)
    for i in range(100):
        await led.commit(_event("order", i))
    await led.close()
    assert threads == {"ledger-writer"}  # never on the engine's thread
    rows = await fetch(pg_url, "SELECT entity_id, seq FROM audit_events "
                               "WHERE account = 'acct-order' ORDER BY seq")
    # every unit, in the order the engine committed them (the tail came with close)
    assert [r["entity_id"] for r in rows] == [f"order-{i}" for i in range(100)]
    engine = make_engine(pg_url)
    assert (await verify_chain(engine)).ok
    await engine.dispose()


async def test_nothing_after_a_failed_batch_is_written(pg_url: str) -> None:
    led = PipelinedLedger(PostgresLedger.from_url(pg_url), batch=5, depth=2, first_batch=5,
                          idle_batch=5)
    for i in range(5):
        await led.commit(_event("fail", i))  # batch 1: fine
    bad = _event("fail", 5)
    # a fill for an order that does not exist violates the foreign key: batch 2 fails whole
    bad.fills.append(Fill("nope:1", "nope", "acct-fail", "BTC/USDT", Side.BUY, D(1), D(1),
                          D(0), "USDT", 0))
    await led.commit(bad)
    with pytest.raises(LedgerError) as caught:
        for i in range(6, 40):  # the engine goes on until it hears of the failure
            await led.commit(_event("fail", i))
        await led.flush()
    assert "nothing of it was kept" in str(caught.value) or "earlier ledger batch failed" in str(
        caught.value)
    with pytest.raises(LedgerError):
        await led.close()
    rows = await fetch(pg_url, "SELECT entity_id FROM audit_events WHERE account = 'acct-fail' "
                               "ORDER BY seq")
    assert [r["entity_id"] for r in rows] == [f"fail-{i}" for i in range(5)]


def test_batch_and_depth_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PipelinedLedger(PostgresLedger.from_url("postgresql://x@127.0.0.1:1/x"), batch=0)
    with pytest.raises(ValueError, match="first_batch 0"):
        PipelinedLedger(PostgresLedger.from_url("postgresql://x@127.0.0.1:1/x"), batch=8,
                        first_batch=0)


async def test_the_first_batches_are_small_and_double_up_to_the_batch_size(pg_url: str) -> None:
    """The writer starts on the first steps instead of idling through a whole first batch:
    batches of a sixteenth of ``batch``, then twice the last, up to ``batch``; every unit is
    written once, in order."""
    inner = PostgresLedger.from_url(pg_url)
    sizes: list[int] = []
    commit = inner.commit

    async def spy(unit: UnitOfWork) -> None:
        sizes.append(len(unit.audit))
        await asyncio.sleep(0.05)  # a busy writer: only the sizes decide
        await commit(unit)

    inner.commit = spy  # type: ignore[method-assign]
    led = PipelinedLedger(inner, batch=64, depth=2)
    for i in range(200):
        await led.commit(_event("ramp", i))
    await led.close()
    assert sizes == [4, 8, 16, 32, 64, 64, 12]
    rows = await fetch(pg_url, "SELECT entity_id FROM audit_events WHERE account = 'acct-ramp' "
                               "ORDER BY seq")
    assert [r["entity_id"] for r in rows] == [f"ramp-{i}" for i in range(200)]


async def test_the_risk_memory_of_a_batch_is_taken_on_the_engine_thread_as_of_its_last_step(
        pg_url: str) -> None:
    """A unit carries the risk manager's memory as a callable, read when the unit is written.
    The writer thread must not call it: the engine keeps changing that state meanwhile (a
    breaker's window that grows while it is copied fails the copy), and the batch's memory
    must be the one of its own last step, not of whatever step the engine has reached."""
    from bot.domain import RiskState

    engine_thread = threading.get_ident()
    seen: list[tuple[int, int]] = []  # (thread, step) of every read
    step = 0

    def memory() -> dict[str, object]:
        seen.append((threading.get_ident(), step))
        return {"machine": RiskState().snapshot(), "step": step}

    inner = PostgresLedger.from_url(pg_url)
    written: list[int] = []
    commit = inner.commit

    async def spy(unit: UnitOfWork) -> None:
        await asyncio.sleep(0.05)  # the engine goes on meanwhile
        written.extend(m()["step"] for m in unit.risk_memory.values())
        await commit(unit)

    inner.commit = spy  # type: ignore[method-assign]
    led = PipelinedLedger(inner, batch=3, depth=2, first_batch=3, idle_batch=3)
    await led.start_run("memo1", "acct-memo", "backtest", "sim", ["BTC/USDT"], "1h", "t", {},
                        D(1000))
    for step in range(1, 10):
        unit = _event("memo", step)
        unit.risk_memory["acct-memo"] = memory
        await led.commit(unit)
    await led.close()
    assert seen and {thread for thread, _ in seen} == {engine_thread}
    assert written == [3, 6, 9]  # each batch's own last step
    rows = await fetch(pg_url, "SELECT breakers FROM risk_states WHERE account = 'acct-memo'")
    assert json.loads(rows[0]["breakers"])["step"] == 9


async def test_an_idle_writer_is_handed_a_quarter_batch_at_once(pg_url: str) -> None:
    """Once the writer has written everything handed over, it is handed what the engine holds
    as soon as that is a quarter of ``batch``: batches follow the writer's pace, and little is
    left to write when the run ends. A busy writer gets full batches (the test above)."""
    inner = PostgresLedger.from_url(pg_url)
    sizes: list[int] = []
    commit = inner.commit

    async def spy(unit: UnitOfWork) -> None:
        sizes.append(len(unit.audit))
        await commit(unit)

    inner.commit = spy  # type: ignore[method-assign]
    led = PipelinedLedger(inner, batch=64, depth=2)
    for i in range(150):
        await led.commit(_event("idle", i))
        await asyncio.sleep(0.01)  # an engine slower than the writer
    await led.close()
    assert sizes[:3] == [4, 8, 16]
    assert sum(sizes) == 150 and len(sizes) >= 8
    assert all(16 <= n < 32 for n in sizes[3:-1]), sizes  # never waits for a full batch
    rows = await fetch(pg_url, "SELECT entity_id FROM audit_events WHERE account = 'acct-idle' "
                               "ORDER BY seq")
    assert [r["entity_id"] for r in rows] == [f"idle-{i}" for i in range(150)]
