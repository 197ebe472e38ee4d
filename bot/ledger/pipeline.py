"""The backtest ledger: batches written by a thread of their own while the engine goes on.

A backtest produces a signal, an equity snapshot and a few audit events per candle. Written in
turn with the engine, the run waits for PostgreSQL as long as it computes. Here the engine
folds its units of work into batches of ``batch`` candle steps and hands each batch to a writer
thread. That thread runs its own event loop with its own connection pool; it builds the rows,
COPYs them and commits, while the engine computes the next batch and the database server
works on the other core.

- **Order.** Batches commit one at a time, in the order they were handed over, so the audit
  chain grows exactly as it would in turn.
- **Starting at once.** The first batch is a sixteenth of ``batch`` and each next one twice
  the last, up to ``batch``: the writer starts on the first few hundred steps instead of
  idling through a whole first batch, which in the eight-pair benchmark kept it idle for the
  run's first 0.4 s while it was the slower of the two for the rest.
- **Following the writer.** A writer that has written everything handed over is handed
  what the engine holds as soon as that is a quarter of ``batch``: when the engine is the
  slower of the two, batches shrink to the writer's pace, and what is left to write when the
  run ends (the engine waits for it) is smaller.
- **Bounded.** At most ``depth`` batches are handed over and not yet committed; the engine
  waits for the oldest before handing over another.
- **Handing the interpreter over.** The engine thread is busy with Python all the time, and
  the writer wakes up on every database answer. With CPython's default switch interval (5 ms)
  each wake-up waited up to 5 ms for the engine to let go, and a batch has a few dozen round
  trips. While a pipelined ledger is open the interval is 0.5 ms (restored on ``close``).
  Measured on BTC/USDT 1h (45,023 candles): engine waits for the writer 3.4 s -> 0.9 s.
- **All or nothing per batch.** Each batch is one transaction: every change with its audit
  event. After a failed batch nothing later is written, and the failure surfaces as the
  ``LedgerError`` of the engine's next ``commit`` or ``flush``. A crash loses only the tail of
  a backtest, which is re-runnable.

Live and paper trading do not use this: there a unit commits before anything reaches the
venue (``PostgresLedger``).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from decimal import Decimal
from typing import Any, TypeVar

from bot.domain import AccountState, ActiveModel, ControlRequest, UnitOfWork
from bot.errors import LedgerError
from bot.ledger.repository import PostgresLedger

T = TypeVar("T")
SWITCH_INTERVAL_S = 0.0005
FIRST_BATCH_DIVISOR = 16  # the first batch is 1/16 of ``batch``; each next one twice the last
IDLE_BATCH_DIVISOR = 4  # an idle writer is handed a batch once it holds a quarter of ``batch``


def _taken(memory: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    return lambda: memory


class PipelinedLedger:
    """Every call reaches the inner ledger on the writer thread; commits are batched there."""

    def __init__(self, inner: PostgresLedger, batch: int = 2000, depth: int = 2,
                 first_batch: int | None = None, idle_batch: int | None = None) -> None:
        if batch < 1 or depth < 1 or any(n is not None and n < 1
                                         for n in (first_batch, idle_batch)):
            raise ValueError(f"batch, depth, first_batch and idle_batch must be at least 1 "
                             f"(batch {batch}, depth {depth}, first_batch {first_batch}, "
                             f"idle_batch {idle_batch})")
        self.inner = inner
        self.batch = batch
        self.depth = depth
        self._pending = UnitOfWork()
        self._count = 0
        # the first batches are small and double up to ``batch``: the writer starts almost
        # with the engine instead of idling through a whole first batch
        self._next = min(batch, first_batch or max(1, batch // FIRST_BATCH_DIVISOR))
        # an idle writer takes a quarter batch at once: batches follow the writer's pace, and
        # what is left to write when the run ends is small
        self._idle_batch = min(batch, idle_batch or max(1, batch // IDLE_BATCH_DIVISOR))
        self._inflight: deque[asyncio.Future[None]] = deque()
        self._failed: str | None = None  # read and written on the writer thread only
        self._lock: asyncio.Lock | None = None  # the writer loop's
        self._loop = asyncio.new_event_loop()
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._loop.run_forever, name="ledger-writer",
                                        daemon=True)
        self._thread.start()
        self._closed = False

    # -- the writer thread -------------------------------------------------------------------
    async def _in_order(self, call: Callable[[], Awaitable[T]]) -> T:
        """Runs on the writer loop: one call at a time, first come first served."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._failed is not None:
                raise LedgerError(f"an earlier ledger batch failed, so this one was not "
                                  f"written: {self._failed}")
            try:
                return await call()
            except LedgerError as exc:
                self._failed = str(exc)
                raise

    def _submit(self, call: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """Queue ``call`` behind everything handed over before; await it for its result."""
        if self._closed:
            raise LedgerError("the ledger is closed")
        done: Future[T] = asyncio.run_coroutine_threadsafe(self._in_order(call), self._loop)
        return asyncio.wrap_future(done)

    # -- the Ledger protocol -----------------------------------------------------------------
    async def start_run(self, run_id: str, account: str, mode: str, exchange: str,
                        symbols: Sequence[str], timeframe: str, strategy: str,
                        config: Mapping[str, object], starting_cash: Decimal,
                        quote: str = "USDT") -> None:
        await self._submit(lambda: self.inner.start_run(
            run_id, account, mode, exchange, symbols, timeframe, strategy, config,
            starting_cash, quote=quote))

    async def load_account(self, account: str) -> AccountState:
        await self.flush()
        return await self._submit(lambda: self.inner.load_account(account))

    async def pending_controls(self, account: str) -> list[ControlRequest]:
        return await self._submit(lambda: self.inner.pending_controls(account))

    async def kill_pending(self, account: str) -> bool:
        """Always False: a backtest's account is its own run's and nothing listens for an
        operator's requests to it (``bot/app.py`` starts the listener for paper and live
        only), so no entry waits on a database round trip here."""
        return False

    async def active_ensemble(self) -> ActiveModel | None:
        return await self._submit(self.inner.active_ensemble)

    async def commit(self, unit: UnitOfWork) -> None:
        self._pending.absorb(unit)
        self._count += 1
        if self._count >= self._next or (
                self._count >= self._idle_batch and self._writer_idle()):
            await self._hand_over()

    def _writer_idle(self) -> bool:
        """Nothing handed over is still being written (batches finish in order)."""
        return not self._inflight or self._inflight[-1].done()

    async def _hand_over(self) -> None:
        while len(self._inflight) >= self.depth:
            await self._inflight.popleft()
        unit, self._pending, self._count = self._pending, UnitOfWork(), 0
        self._next = min(self.batch, self._next * 2)
        # The risk manager's memory is read here, on the engine's thread, as of the batch's
        # last step. Read on the writer thread it would be a later step's (or fail: its
        # windows change size while the engine runs), beside this batch's rows.
        unit.risk_memory = {account: _taken(memory_of())
                            for account, memory_of in unit.risk_memory.items()}
        self._inflight.append(self._submit(lambda: self.inner.commit(unit)))

    async def flush(self) -> None:
        if self._pending:
            await self._hand_over()
        first: BaseException | None = None
        while self._inflight:  # every batch is waited for, even after one failed
            try:
                await self._inflight.popleft()
            except LedgerError as exc:
                first = first or exc
        if first is not None:
            raise first

    async def finish_run(self, run_id: str, status: str, summary: Mapping[str, object]) -> None:
        await self.flush()
        await self._submit(lambda: self.inner.finish_run(run_id, status, summary))

    async def chain_head(self) -> tuple[int, str] | None:
        await self.flush()
        return await self._submit(self.inner.chain_head)

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            try:
                # the pool's connections belong to the writer loop: they are closed there
                await asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(self.inner.close(), self._loop))
            finally:
                self._closed = True
                self._loop.call_soon_threadsafe(self._loop.stop)
                await asyncio.to_thread(self._thread.join)
                self._loop.close()
                sys.setswitchinterval(self._switch)
