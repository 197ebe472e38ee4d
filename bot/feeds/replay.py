"""Replay feed: validated candle files merged in time order, with perpetuals' funding."""

from __future__ import annotations

import bisect
import heapq
from collections.abc import AsyncIterator, Iterator, Sequence

from bot.domain import Candle, CandleSeries, FundingRate, Gap, Warmup

FeedEvent = tuple[Candle, ...] | Gap | Warmup | FundingRate


class ReplayFeed:
    """Emits every candle of every series once, ordered by (open time, symbol).

    A gap is emitted right before the first candle after the hole, so the engine can record it
    and react; the hole is never filled with invented candles. A funding rate at time T is
    emitted before the first batch that opens at or after T: after the candle that closes at
    T, on the position held then.
    """

    def __init__(
        self,
        series: Sequence[CandleSeries],
        start_ms: int | None = None,
        end_ms: int | None = None,
        warmup: int = 1200,  # models.ensemble.LIVE_WARMUP: a full window plus the replay
    ) -> None:
        self._series = list(series)
        self._warmup = warmup
        self._start = start_ms
        self._end = end_ms
        self._resume: dict[str, int] = {}

    @property
    def symbols(self) -> list[str]:
        return [s.symbol for s in self._series]

    def resume_after(self, last_ts: dict[str, int]) -> None:
        """Skip candles already processed by an earlier run (per symbol, by open time)."""
        self._resume = dict(last_ts)

    def _one(self, series: CandleSeries,
             order: int) -> Iterator[tuple[int, str, int, int, Candle | Gap]]:
        """The series' gaps and candles as (open time, symbol, gap 0 / candle 1, ``order``,
        event): tuples that sort as the merge needs without reaching the event, ``order``
        (the series' place) settling ties as a merge keeps them, in input order."""
        gaps = {g.next_ts: g for g in series.gaps}
        lo = max(self._start or -1, self._resume.get(series.symbol, -1) + 1)
        hi = self._end
        first = True
        for c in series.candles:
            if c.ts < lo or (hi is not None and c.ts >= hi):
                continue
            gap = gaps.get(c.ts)
            if gap is not None and not first:
                yield (c.ts, series.symbol, 0, order, gap)
            first = False
            yield (c.ts, series.symbol, 1, order, c)

    def first_index(self, series: CandleSeries) -> int | None:
        """Where in ``series.candles`` the first candle this feed hands over for it sits, as
        things stand (``resume_after`` may move it): the first of its warm-up, else the first
        candle it streams (None: none)."""
        cs = series.candles
        lo = max(self._start or -1, self._resume.get(series.symbol, -1) + 1)
        before = bisect.bisect_left(cs, lo, key=lambda c: c.ts)  # candles opening before lo
        if lo > 0 and before:
            return before - min(before, self._warmup)
        if before < len(cs) and (self._end is None or cs[before].ts < self._end):
            return before
        return None

    def _warm(self) -> Iterator[FeedEvent]:
        """Up to ``warmup`` candles before the start (or the resume point), per symbol: they
        bring indicators and models up to date and are never traded."""
        for s in self._series:
            lo = max(self._start or -1, self._resume.get(s.symbol, -1) + 1)
            before = [c for c in s.candles if c.ts < lo][-self._warmup:] if lo > 0 else []
            if before:
                yield Warmup(tuple(before))

    def _funding(self) -> list[FundingRate]:
        """Every series' funding from its start (or resume point) on, in time order."""
        out = []
        for s in self._series:
            lo = max(self._start or -1, self._resume.get(s.symbol, -1) + 1)
            out += [f for f in s.funding if f.ts >= lo
                    and (self._end is None or f.ts < self._end)]
        return sorted(out, key=lambda f: (f.ts, f.symbol))

    def events(self) -> Iterator[FeedEvent]:
        """Warm-up, then gaps, funding and batches of candles that share one open time."""
        yield from self._warm()
        merged = heapq.merge(*(self._one(s, i) for i, s in enumerate(self._series)))
        funding = self._funding()
        due = 0
        batch: list[Candle] = []
        for _, _, _, _, event in merged:
            if isinstance(event, Gap):
                yield event
                continue
            if batch and batch[0].ts != event.ts:
                yield tuple(batch)
                batch = []
            if not batch:
                while due < len(funding) and funding[due].ts <= event.ts:
                    yield funding[due]
                    due += 1
            batch.append(event)
        if batch:
            yield tuple(batch)

    async def stream(self) -> AsyncIterator[FeedEvent]:
        for event in self.events():
            yield event

    async def close(self) -> None:
        return None
