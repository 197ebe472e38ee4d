"""Protective levels: an ATR stop and take-profit on entry, and a chandelier trailing stop
that only ever moves up (long positions). Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StopLevels:
    entry: float
    stop: float
    target: float
    highest: float  # highest high since entry (chandelier anchor)
    atr: float

    @classmethod
    def on_entry(cls, entry: float, atr: float, k_stop: float, k_target: float) -> StopLevels:
        return cls(entry, entry - k_stop * atr, entry + k_target * atr, entry, atr)

    def trail(self, high: float, atr: float, k_chandelier: float) -> StopLevels:
        """Chandelier: highest high since entry minus k ATRs; never lowers the stop."""
        highest = max(self.highest, high)
        stop = max(self.stop, highest - k_chandelier * atr)
        return StopLevels(self.entry, stop, self.target, highest, atr)

    def hit(self, low: float, high: float) -> str | None:
        """Which level a candle touched (the stop wins when both did: assume the worst)."""
        if low <= self.stop:
            return "stop"
        if high >= self.target:
            return "target"
        return None
