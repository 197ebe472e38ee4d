"""Live candles through ccxt: websocket (``watch_ohlcv``) with REST (``fetch_ohlcv``) behind it.

Guarantees, whichever source is read:
- only closed candles: a candle is closed when a newer one exists or the venue's clock (not
  ours: ``bot/exchange/venue_clock.py``) passed its end;
- each exactly once, in order, per symbol, also across a switch between websocket and REST;
- holes are backfilled through ``fetch_ohlcv``; what the exchange itself lacks is a ``Gap``;
- candles too old to act on (history at start, a long backfill) come as ``Warmup``;
- a malformed candle is logged with its reason and dropped, never traded;
- for perpetuals, each funding time that passed comes as a ``FundingRate`` (the venue's rate
  from its funding history) before the first candle batch opening at or after it, as the
  replay feed does: the paper venue books it. A failed funding read is tried again with the
  next batch, never skipped.

Failures:
- ``feed auto`` means websocket first. If it cannot connect, or is silent for
  ``ws_silence_s`` (a fraction of the timeframe), the feed says so (a warning and a
  ``FeedStatus`` the engine audits) and polls REST, trying the websocket again every
  ``ws_retry_s``; when it answers, the feed switches back.
- a stall (no closed candle for ``stall_timeout``) is treated as a failure on either source;
- a failed read never ends the run. After ``stale_after_failures`` failures in a row the feed
  reports itself stale (entries are blocked) and keeps trying with jittered backoff; fresh
  data clears it. Only configuration and permission errors (``FatalExchangeError``) end it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Any

from bot.clock import Clock
from bot.config import ExchangeSettings
from bot.domain import Candle, FeedState, FeedStatus, FundingRate, Gap, Warmup, timeframe_ms
from bot.errors import ConfigError, ExchangeError, ExchangeUnavailable, VenueError
from bot.exchange.errors import call
from bot.exchange.retry import RetryPolicy, read
from bot.exchange.venue_clock import VenueClock
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
                candle = Candle(self.symbol, self.timeframe, ts, *_ohlcv(r))
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
        self.venue = VenueClock(exchange, clock, cfg.clock_sync_s)
        self.warmup = warmup
        self.stall_s = cfg.stall_timeout or max(2 * self.step / 1000, 3 * cfg.poll_interval)
        self.silence_s = cfg.ws_silence_s or min(30.0, max(5.0, self.step / 4000))
        self._trackers = {s: CloseTracker(s, timeframe) for s in self.symbols}
        self._resume: dict[str, int] = {}
        self._newest = 0  # open time of the newest candle the venue has shown (forming too)
        self._pending: dict[str, dict[int, list[Any]]] = {}  # websocket rows not emitted yet
        self.source = "rest"
        self.failures = 0  # consecutive failed reads
        self.stale = False
        self.reconnects = 0
        self.fallbacks = 0
        self.read_policy = RetryPolicy()  # per read; the feed's own loop retries beyond it
        self._swaps = [s for s in self.symbols if ":" in s]  # perpetuals: they have funding
        self._funded: dict[str, int] = {}  # per perpetual: the last funding time emitted
        self._next_funding: dict[str, int] = {}  # ... and the venue's next one
        self._waiting: dict[str, list[FundingRate]] = {}  # read, its candles not here yet

    def resume_after(self, last_ts: dict[str, int]) -> None:
        self._resume = {s: ts for s, ts in last_ts.items() if s in self._trackers}

    async def _funding_for(self, event: FeedEvent) -> list[FundingRate]:
        """Funding that goes before ``event``: before a candle batch, what passed before it
        opened; before warm-up (a resumed account's downtime), what passed during it."""
        if not self._swaps:
            return []
        if isinstance(event, tuple) and event:
            return await self._funding_before(event[0].ts)
        if isinstance(event, Warmup) and event.candles:
            return await self._funding_before(max(c.ts for c in event.candles))
        return []

    async def _funding_before(self, opens: int) -> list[FundingRate]:
        """The perpetuals' funding times before the candle batch opening at ``opens`` (after
        the last one emitted, or the last candle a resumed account saw, or the start), with
        the venue's rates, oldest first. The venue's history can run ahead of the candles (it
        is read on its own clock): what lies beyond ``opens`` waits for its batch. A symbol
        whose read fails keeps its place and is asked again with the next batch."""
        out: list[FundingRate] = []
        for sym in self._swaps:
            if sym not in self._funded:  # a new account holds nothing before its first batch
                self._funded[sym] = self._resume.get(sym, opens)
            waiting = self._waiting.setdefault(sym, [])
            if opens >= self._next_funding.get(sym, 0) and not waiting:
                try:
                    rows = await read(self.exchange, partial(
                        self.exchange.fetch_funding_rate_history, sym, self._funded[sym] + 1),
                        "funding", self.read_policy)
                    nxt = await read(self.exchange,
                                     partial(self.exchange.fetch_funding_rate, sym), "funding",
                                     self.read_policy)
                except ExchangeError as exc:
                    log.warning("funding_unavailable", symbol=sym, error=str(exc)[:300])
                    continue
                for r in sorted(rows, key=lambda r: int(r.get("timestamp") or 0)):
                    ts = int(r.get("timestamp") or 0)
                    if ts > self._funded[sym] and r.get("fundingRate") is not None:
                        mark = (r.get("info") or {}).get("markPrice")
                        waiting.append(FundingRate(sym, ts, float(r["fundingRate"]),
                                                   float(mark) if mark else None))
                        self._funded[sym] = ts
                self._next_funding[sym] = int(nxt.get("fundingTimestamp") or 0)
            while waiting and waiting[0].ts <= opens:
                out.append(waiting.pop(0))
        return sorted(out, key=lambda f: (f.ts, f.symbol))

    def exchange_now(self) -> int:
        """The venue's time: its clock as measured, and never before the open of the newest
        candle it has shown (a venue does not show candles from its future)."""
        return max(self.venue.now_ms(), self._newest)

    def _seen(self, rows: Sequence[Sequence[Any]]) -> None:
        for r in rows:
            if r and r[0] is not None and int(r[0]) > self._newest:
                self._newest = int(r[0])

    @property
    def use_ws(self) -> bool:
        has_ws = bool(self.exchange.has.get("watchOHLCV"))  # ccxt's declared capabilities
        if self.cfg.feed == "ws" and not has_ws:
            raise ConfigError(f"exchange.feed: {self.exchange.id} has no websocket candles; "
                              "use --feed rest or auto")
        return self.cfg.feed == "ws" or (self.cfg.feed == "auto" and has_ws)

    # ---- REST helpers -------------------------------------------------------------------
    async def _fetch(self, symbol: str, since: int | None, limit: int = PAGE) -> list[list[Any]]:
        rows: list[list[Any]] = []
        while True:
            page = await read(self.exchange, partial(self.exchange.fetch_ohlcv, symbol,
                                                     self.timeframe, since, limit),
                              "ohlcv", self.read_policy)
            rows.extend(page)
            if since is None or len(page) < limit or not page:
                self._seen(rows)
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
        items.sort(key=lambda x: (x[0], x[1], x[2].symbol))
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
        await self.venue.sync()
        per: dict[str, list[Candle]] = {}
        for sym in self.symbols:
            resumed = self._resume.get(sym)
            since = self.venue.now_ms() - (self.warmup + 1) * self.step
            if resumed is not None:
                since = min(since, resumed - self.warmup * self.step)
            before = self.exchange_now()  # the venue's time was at least this when it answered
            per[sym] = self._trackers[sym].closed(await self._fetch(sym, since), before)
        return self._events(per, self.exchange_now())

    # ---- the stream ---------------------------------------------------------------------
    async def stream(self) -> AsyncIterator[FeedEvent]:
        prefer_ws = self.use_ws
        self.source = "ws" if prefer_ws else "rest"
        started = False
        while True:
            on_ws = False
            try:
                if not started:
                    await read(self.exchange, lambda: self.exchange.load_markets(), "markets",
                               self.read_policy)
                    log.info("feed_start", source=self.source, symbols=self.symbols,
                             timeframe=self.timeframe, ws_silence_s=self.silence_s)
                    for event in await self._history():
                        for funding in await self._funding_for(event):
                            yield funding
                        yield event
                    started = True
                    if (status := self._flowing()) is not None:
                        yield status
                on_ws = self.source == "ws"
                source = self._ws_events() if on_ws else self._rest_events(prefer_ws)
                async for event in source:
                    if (status := self._flowing()) is not None:
                        yield status
                    for funding in await self._funding_for(event):
                        yield funding
                    yield event
                if not on_ws:  # a probe found the websocket answering again: switch back
                    self.source = "ws"
                    log.info("feed_ws_restored")
                    yield FeedStatus(FeedState.WS_RESTORED, "ws", "the websocket answers again")
            except (TimeoutError, ExchangeError) as exc:
                reason = str(exc)[:300] or type(exc).__name__
                if on_ws:
                    await self._close_ws()
                    self.source = "rest"
                    self.fallbacks += 1
                    log.warning("feed_fallback", source="rest", reason=reason,
                                retry_ws_every_s=self.cfg.ws_retry_s)
                    yield FeedStatus(FeedState.FALLBACK, "rest", reason, self.failures)
                    continue  # poll REST at once: no candle waits on a backoff
                self.failures += 1
                self.reconnects += 1
                delay = min(60.0, 0.5 * 2 ** min(self.failures, 7)) * random.uniform(0.5, 1.5)
                log.warning("feed_retry", error=reason, failures=self.failures,
                            delay_s=round(delay, 2), source=self.source)
                if self.failures >= self.cfg.stale_after_failures and not self.stale:
                    self.stale = True
                    log.error("feed_stale", failures=self.failures, reason=reason)
                    yield FeedStatus(FeedState.STALE, self.source, reason, self.failures)
                await asyncio.sleep(delay)

    def _flowing(self) -> FeedStatus | None:
        """Data flowed: the failure streak ends, and a stale feed says it is fresh again."""
        self.failures = 0
        if not self.stale:
            return None
        self.stale = False
        log.info("feed_fresh", source=self.source)
        return FeedStatus(FeedState.FRESH, self.source, "data flows again")

    async def _rest_events(self, probe_ws: bool) -> AsyncIterator[FeedEvent]:
        """Poll until the stall watchdog fires (raises) or, when the websocket is preferred, a
        probe finds it answering again (returns)."""
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        next_probe = loop.time() + self.cfg.ws_retry_s
        probe: asyncio.Task[bool] | None = None
        first = True
        try:
            while True:
                if not first:
                    await asyncio.sleep(self.cfg.poll_interval)
                first = False
                await self.venue.sync_if_due()
                per: dict[str, list[Candle]] = {}
                for sym in self.symbols:
                    last = self._trackers[sym].last_ts
                    # a row counts as closed on the venue's time as known before the request
                    # (a newer row in the same answer also closes it)
                    before = self.exchange_now()
                    rows = await self._fetch(sym, last + self.step if last is not None else None)
                    per[sym] = self._trackers[sym].closed(rows, before)
                events = self._events(per, self.exchange_now())
                if not events and loop.time() - quiet_since > self.stall_s:
                    raise ExchangeUnavailable(f"no closed candle for {self.stall_s:.0f}s")
                for event in events:
                    yield event
                if events:  # after the consumer took them: time it spent is not a stall
                    quiet_since = loop.time()
                if probe_ws and probe is None and loop.time() >= next_probe:
                    probe = asyncio.create_task(self._probe_ws())
                if probe is not None and probe.done():
                    if probe.result():
                        return
                    probe, next_probe = None, loop.time() + self.cfg.ws_retry_s
        finally:
            if probe is not None and not probe.done():
                probe.cancel()
                await asyncio.gather(probe, return_exceptions=True)

    async def _probe_ws(self) -> bool:
        """Does the websocket answer now? Quietly: a failed probe is not news."""
        try:
            rows = await asyncio.wait_for(call(self.exchange.watch_ohlcv(
                self.symbols[0], self.timeframe)), timeout=self.silence_s)
        except (TimeoutError, VenueError) as exc:  # a probe never ends the run
            log.debug("ws_probe_failed", error=str(exc)[:200])
            await self._close_ws()
            return False
        return bool(rows)

    async def _ws_events(self) -> AsyncIterator[FeedEvent]:
        queue: asyncio.Queue[tuple[str, list[list[Any]]]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def watch(sym: str) -> None:
            while True:
                rows = await call(self.exchange.watch_ohlcv(sym, self.timeframe))
                await queue.put((sym, rows))

        tasks = [asyncio.create_task(watch(s)) for s in self.symbols]
        closed_at = loop.time()
        getter: asyncio.Future[tuple[str, list[list[Any]]]] | None = None
        try:
            while True:
                getter = getter or asyncio.ensure_future(queue.get())
                # a watcher that fails (cannot connect, dropped) ends this at once; silence
                # ends it after ``silence_s``
                waiting: set[asyncio.Future[Any]] = {getter, *tasks}
                done, _ = await asyncio.wait(waiting, timeout=self.silence_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                for t in tasks:
                    if t.done():
                        t.result()  # re-raise a watcher's error
                if getter not in done:
                    raise ExchangeUnavailable(f"websocket silent for {self.silence_s:.0f}s")
                sym, rows = getter.result()
                getter = None
                if loop.time() - closed_at > self.stall_s:
                    raise ExchangeUnavailable(f"no closed candle on the websocket for "
                                              f"{self.stall_s:.0f}s")
                # the venue's clock alone: the stream's own newest row must not make candles
                # that queued up behind a slow consumer look too old to trade
                now = self.venue.now_ms()
                self._seen(rows)
                tracker = self._trackers[sym]
                # ccxt.pro hands over only the rows updated since the last call, so a closed
                # candle's final update often comes alone and its successor in the next
                # message: keep the rows not emitted yet and judge them together
                pending = self._pending.setdefault(sym, {})
                for r in rows:
                    if r and r[0] is not None:
                        pending[int(r[0])] = r  # a later update of the same candle wins
                candles = tracker.closed(list(pending.values()), None)
                last = tracker.last_ts
                if candles and last is not None and candles[0].ts > last + self.step:
                    # a hole in the stream: backfill it over REST before going on
                    filled = tracker.closed(await self._fetch(sym, last + self.step), now)
                    merged = {c.ts: c for c in filled + candles}
                    candles = [merged[ts] for ts in sorted(merged)]
                for event in self._events({sym: candles}, now):
                    yield event
                emitted = tracker.last_ts
                if emitted is not None:
                    for ts in [ts for ts in pending if ts <= emitted]:
                        del pending[ts]
                if candles:  # after the consumer took them: time it spent is not a stall
                    closed_at = loop.time()
        finally:
            running: list[asyncio.Future[Any]] = [*tasks, *([getter] if getter else [])]
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _close_ws(self) -> None:
        """Tear down the websocket connections only; the REST session stays usable and the
        next ``watch_ohlcv`` opens a fresh socket."""
        clients = self.exchange.clients  # ccxt.pro's open websocket clients, by url
        for url, client in list(clients.items()):
            try:
                await client.close()
            except Exception as exc:  # a broken socket may fail to close; we reopen anyway
                log.debug("ws_close_failed", url=url, error=str(exc))
            clients.pop(url, None)

    async def close(self) -> None:
        return None


def _ohlcv(row: Sequence[Any]) -> tuple[float, float, float, float, float]:
    """open, high, low, close, volume of a ccxt OHLCV row, as floats."""
    o, h, low, c, v = (float(x) for x in row[1:6])
    return o, h, low, c, v
