"""Replay feed: validated candle files merged in time order."""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Iterator, Sequence

from bot.domain import Candle, Gap
from bot.feeds.files import CandleSeries

FeedEvent = tuple[Candle, ...] | Gap  # candles sharing one open time, or a hole


class ReplayFeed:
    """Emits every candle of every series once, ordered by (open time, symbol).

    A gap is emitted right before the first candle after the hole, so the engine can record it
    and react; the hole is never filled with invented candles.
    """

    def __init__(
        self,
        series: Sequence[CandleSeries],
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> None:
        self._series = list(series)
        self._start = start_ms
        self._end = end_ms
        self._resume: dict[str, int] = {}

    @property
    def symbols(self) -> list[str]:
        return [s.symbol for s in self._series]

    def resume_after(self, last_ts: dict[str, int]) -> None:
        """Skip candles already processed by an earlier run (per symbol, by open time)."""
        self._resume = dict(last_ts)

    def _one(self, series: CandleSeries) -> Iterator[tuple[int, str, int, FeedEvent]]:
        gaps = {g.next_ts: g for g in series.gaps}
        lo = max(self._start or -1, self._resume.get(series.symbol, -1) + 1)
        hi = self._end
        first = True
        for c in series.candles:
            if c.ts < lo or (hi is not None and c.ts >= hi):
                continue
            gap = gaps.get(c.ts)
            if gap is not None and not first:
                yield (c.ts, series.symbol, 0, gap)
            first = False
            yield (c.ts, series.symbol, 1, c)

    def events(self) -> Iterator[FeedEvent]:
        """Gaps, and batches of candles that share one open time (one per symbol at most)."""
        merged = heapq.merge(*(self._one(s) for s in self._series), key=lambda e: e[:3])
        batch: list[Candle] = []
        for _, _, _, event in merged:
            if isinstance(event, Gap):
                yield event
                continue
            if batch and batch[0].ts != event.ts:
                yield tuple(batch)
                batch = []
            batch.append(event)
        if batch:
            yield tuple(batch)

    async def stream(self) -> AsyncIterator[FeedEvent]:
        for event in self.events():
            yield event

    async def close(self) -> None:
        return None
