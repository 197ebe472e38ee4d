"""Live candles through ccxt: websocket (``watch_ohlcv``) or REST polling (``fetch_ohlcv``).

Guarantees, in both modes:
- only closed candles: a candle is closed when a newer one exists or exchange time passed its end;
- each exactly once, in order, per symbol;
- holes are backfilled through ``fetch_ohlcv``; what the exchange itself lacks is a ``Gap``;
- candles too old to act on (history at start, a long backfill) come as ``Warmup``;
- a malformed candle is logged with its reason and dropped, never traded;
- a stalled stream (no closed candle for ``stall_timeout``) is torn down and reopened with
  jittered exponential backoff, as are network errors.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

from bot.clock import Clock
from bot.config import ExchangeSettings
from bot.domain import Candle, Gap, Warmup, timeframe_ms
from bot.errors import ExchangeError, ExchangeUnavailable
from bot.exchange.errors import call
from bot.exchange.retry import read
from bot.feeds.validate import candle_problem
from bot.logs import get_logger
from bot.ports import FeedEvent

log = get_logger("feed")
PAGE = 1000


class CloseTracker:
    """Per-symbol bookkeeping of what has been emitted. Pure: no I/O."""

    def __init__(self, symbol: str, timeframe: str, last_ts: int | None = None) -> None:
        self.symbol, self.timeframe = symbol, timeframe
        self.step = timeframe_ms(timeframe)
        self.last_ts = last_ts  # open time of the last emitted candle

    def closed(self, rows: Sequence[Sequence[Any]], exchange_now: int | None) -> list[Candle]:
        """The rows that are closed and new, in order; malformed rows are dropped (logged)."""
        rows = sorted((r for r in rows if r and r[0] is not None), key=lambda r: r[0])
        newest = rows[-1][0] if rows else None
        out: list[Candle] = []
        seen: set[int] = set()
        for r in rows:
            ts = int(r[0])
            if ts in seen or (self.last_ts is not None and ts <= self.last_ts):
                continue
            ended = exchange_now is not None and ts + self.step <= exchange_now
            if ts == newest and not ended:
                continue  # still forming
            try:
                candle = Candle(self.symbol, self.timeframe, ts, *(float(x) for x in r[1:6]))
            except (TypeError, ValueError):
                log.error("bad_candle", symbol=self.symbol, ts=ts, reason="non-numeric field")
                continue
            problem = candle_problem(candle)
            if problem:
                log.error("bad_candle", symbol=self.symbol, ts=ts, reason=problem)
                continue
            seen.add(ts)
            out.append(candle)
        return out

    def accept(self, candles: Sequence[Candle]) -> list[Candle | Gap]:
        """Mark candles emitted; returns them with a ``Gap`` before each hole."""
        events: list[Candle | Gap] = []
        for c in candles:
            if self.last_ts is not None and c.ts - self.last_ts > self.step:
                events.append(Gap(self.symbol, self.timeframe, self.last_ts, c.ts))
            events.append(c)
            self.last_ts = c.ts
        return events


class LiveFeed:
    def __init__(self, exchange: Any, symbols: Sequence[str], timeframe: str,
                 cfg: ExchangeSettings, clock: Clock, warmup: int = 200) -> None:
        self.exchange = exchange
        self.symbols = list(symbols)
        self.timeframe = timeframe
        self.step = timeframe_ms(timeframe)
        self.cfg = cfg
        self.clock = clock
        self.warmup = warmup
        self.stall_s = cfg.stall_timeout or max(2 * self.step / 1000, 3 * cfg.poll_interval)
        self._trackers = {s: CloseTracker(s, timeframe) for s in self.symbols}
        self._resume: dict[str, int] = {}
        self._offset_ms = 0  # exchange time - local time, refreshed by REST polls
        self.reconnects = 0

    def resume_after(self, last_ts: dict[str, int]) -> None:
        self._resume = {s: ts for s, ts in last_ts.items() if s in self._trackers}

    def exchange_now(self) -> int:
        return self.clock.now_ms() + self._offset_ms

    @property
    def use_ws(self) -> bool:
        has_ws = bool(getattr(self.exchange, "has", {}).get("watchOHLCV"))
        if self.cfg.feed == "ws" and not has_ws:
            raise ExchangeError(f"{self.exchange.id} has no websocket candles; use --feed rest")
        return self.cfg.feed == "ws" or (self.cfg.feed == "auto" and has_ws)

    # ---- REST helpers -------------------------------------------------------------------
    async def _server_time(self) -> int:
        try:
            now = int(await read(self.exchange, lambda: self.exchange.fetch_time(), "time"))
        except ExchangeError:
            return self.exchange_now()
        self._offset_ms = now - self.clock.now_ms()
        return now

    async def _fetch(self, symbol: str, since: int | None, limit: int = PAGE) -> list[list[Any]]:
        rows: list[list[Any]] = []
        while True:
            page = await read(self.exchange, lambda s=since: self.exchange.fetch_ohlcv(
                symbol, self.timeframe, s, limit), "ohlcv")
            rows.extend(page)
            if since is None or len(page) < limit or not page:
                return rows
            since = int(page[-1][0]) + self.step

    # ---- shared path from rows to events --------------------------------------------------
    def _events(self, per_symbol: dict[str, list[Candle]], now: int) -> list[FeedEvent]:
        """Merge symbols by time; candles older than the latest closed one are warm-up."""
        fresh_from = now - 2 * self.step  # the newest closed candle opened after this
        items: list[tuple[int, int, Candle | Gap]] = []
        for sym, candles in per_symbol.items():
            for ev in self._trackers[sym].accept(candles):
                ts = ev.ts if isinstance(ev, Candle) else ev.next_ts
                items.append((ts, 0 if isinstance(ev, Gap) else 1, ev))
        items.sort(key=lambda x: (x[0], x[1], getattr(x[2], "symbol", "")))
        events: list[FeedEvent] = []
        warm: list[Candle] = []
        batch: list[Candle] = []
        for _, _, ev in items:
            if isinstance(ev, Gap):
                events.append(ev)
                continue
            resumed = self._resume.get(ev.symbol)
            if ev.ts < fresh_from or (resumed is not None and ev.ts <= resumed):
                warm.append(ev)
                continue
            if batch and batch[0].ts != ev.ts:
                events.append(tuple(batch))
                batch = []
            batch.append(ev)
        if warm:
            events.insert(0, Warmup(tuple(warm)))
        if batch:
            events.append(tuple(batch))
        return events

    async def _history(self) -> list[FeedEvent]:
        now = await self._server_time()
        per: dict[str, list[Candle]] = {}
        for sym in self.symbols:
            resumed = self._resume.get(sym)
            since = now - (self.warmup + 1) * self.step
            if resumed is not None:
                since = min(since, resumed - self.warmup * self.step)
            rows = await self._fetch(sym, since)
            per[sym] = self._trackers[sym].closed(rows, now)
        return self._events(per, now)

    # ---- the stream ---------------------------------------------------------------------
    async def stream(self) -> AsyncIterator[FeedEvent]:
        await read(self.exchange, lambda: self.exchange.load_markets(), "markets")
        ws = self.use_ws
        log.info("feed_start", mode="ws" if ws else "rest", symbols=self.symbols,
                 timeframe=self.timeframe)
        attempt = 0
        while True:
            try:
                for event in await self._history():
                    yield event
                source = self._ws_events() if ws else self._rest_events()
                async for event in source:
                    attempt = 0
                    yield event
            except (ExchangeUnavailable, asyncio.TimeoutError) as exc:
                attempt += 1
                self.reconnects += 1
                delay = min(60.0, 0.5 * 2 ** min(attempt, 7)) * random.uniform(0.5, 1.5)
                log.warning("feed_reconnect", error=str(exc), attempt=attempt,
                            delay_s=round(delay, 2))
                if ws:
                    await self._close_ws()
                await asyncio.sleep(delay)

    async def _rest_events(self) -> AsyncIterator[FeedEvent]:
        quiet_since = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self.cfg.poll_interval)
            now = await self._server_time()
            per: dict[str, list[Candle]] = {}
            for sym in self.symbols:
                last = self._trackers[sym].last_ts
                rows = await self._fetch(sym, last + self.step if last is not None else None)
                per[sym] = self._trackers[sym].closed(rows, now)
            events = self._events(per, now)
            loop_now = asyncio.get_running_loop().time()
            if events:
                quiet_since = loop_now
            elif loop_now - quiet_since > self.stall_s:
                raise ExchangeUnavailable(f"no closed candle for {self.stall_s:.0f}s")
            for event in events:
                yield event

    async def _ws_events(self) -> AsyncIterator[FeedEvent]:
        queue: asyncio.Queue[tuple[str, list[list[Any]]]] = asyncio.Queue()

        async def watch(sym: str) -> None:
            while True:
                rows = await call(self.exchange.watch_ohlcv(sym, self.timeframe))
                await queue.put((sym, rows))

        tasks = [asyncio.create_task(watch(s)) for s in self.symbols]
        try:
            while True:
                done = [t for t in tasks if t.done()]
                for t in done:
                    t.result()  # re-raise a watcher's error
                try:
                    sym, rows = await asyncio.wait_for(queue.get(), timeout=self.stall_s)
                except asyncio.TimeoutError:
                    raise ExchangeUnavailable(f"websocket silent for {self.stall_s:.0f}s") from None
                now = self.exchange_now()
                tracker = self._trackers[sym]
                candles = tracker.closed(rows, None)
                if candles and tracker.last_ts is not None and candles[0].ts > tracker.last_ts + self.step:
                    # a hole in the stream: backfill it over REST before going on
                    filled = tracker.closed(await self._fetch(sym, tracker.last_ts + self.step), now)
                    merged = {c.ts: c for c in filled + candles}
                    candles = [merged[ts] for ts in sorted(merged)]
                for event in self._events({sym: candles}, now):
                    yield event
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _close_ws(self) -> None:
        """Tear down the websocket connections only; the REST session stays usable and the
        next ``watch_ohlcv`` opens a fresh socket."""
        clients = getattr(self.exchange, "clients", {}) or {}
        for url, client in list(clients.items()):
            try:
                await client.close()
            except Exception as exc:  # a broken socket may fail to close; we reopen anyway
                log.debug("ws_close_failed", url=url, error=str(exc))
            clients.pop(url, None)

    async def close(self) -> None:
        return None
