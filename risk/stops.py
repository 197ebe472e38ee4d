"""Protective levels: an ATR stop and take-profit on entry, and a chandelier trailing stop
that only ever moves in the position's favour. ``direction`` 1 is long (stop below), -1 short
(stop above, target below, the anchor the lowest low). Pure."""

from __future__ import annotations

from bot.domain import message


@message
class StopLevels:
    entry: float
    stop: float
    target: float
    highest: float  # the chandelier anchor: highest high since entry (lowest low, short)
    atr: float
    direction: float = 1.0  # 1 long, -1 short

    @classmethod
    def on_entry(cls, entry: float, atr: float, k_stop: float, k_target: float,
                 direction: float = 1.0) -> StopLevels:
        """``k_stop`` and ``k_target``: this side's distances in ATRs (a short's come from
        ``risk.sizing.bet_distances``)."""
        return cls(entry, entry - direction * k_stop * atr, entry + direction * k_target * atr,
                   entry, atr, direction)

    def trail(self, high: float, atr: float, k_chandelier: float,
              low: float | None = None) -> StopLevels:
        """Chandelier: the extreme since entry minus (long) or plus (short) k ATRs; never
        moves the stop against the position."""
        if self.direction > 0:
            highest = max(self.highest, high)
            stop = max(self.stop, highest - k_chandelier * atr)
        else:
            highest = min(self.highest, high if low is None else low)
            stop = min(self.stop, highest + k_chandelier * atr)
        return StopLevels(self.entry, stop, self.target, highest, atr, self.direction)

    def hit(self, low: float, high: float) -> str | None:
        """Which level a candle touched (the stop wins when both did: assume the worst)."""
        if self.direction > 0:
            if low <= self.stop:
                return "stop"
            if high >= self.target:
                return "target"
            return None
        if high >= self.stop:
            return "stop"
        if low <= self.target:
            return "target"
        return None
