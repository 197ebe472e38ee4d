"""Clocks. The engine asks a clock for "now"; backtests plug in a simulated one."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...

    def observe(self, ts_ms: int) -> None:
        """The engine reports the close time of each candle batch it processes."""
        ...


class WallClock:
    """UTC wall time in milliseconds."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def observe(self, ts_ms: int) -> None:
        return None


class SimulatedClock:
    """Time that moves only when the engine processes a candle that closed."""

    def __init__(self, start_ms: int = 0) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def observe(self, ts_ms: int) -> None:
        if ts_ms > self._now:
            self._now = ts_ms
