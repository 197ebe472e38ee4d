"""The venue's clock as this process knows it.

ccxt keeps one number, ``options['timeDifference']`` (local minus venue, ms), set by
``load_time_difference``; Binance's client signs every request with local time minus it. This
clock reads the same number, so candles are judged closed, and requests signed, on one
measurement of the venue's time: taken at start, every ``sync_every_s``, and again whenever
the venue refuses a timestamp (-1021, see ``bot/exchange/retry.py``).
"""

from __future__ import annotations

import time
from typing import Any

from bot.clock import Clock
from bot.exchange.retry import resync_clock
from bot.logs import get_logger

log = get_logger("exchange.clock")


class VenueClock:
    def __init__(self, exchange: Any, local: Clock, sync_every_s: float = 300.0) -> None:
        self.exchange, self.local, self.sync_every_s = exchange, local, sync_every_s
        self._synced_at: float | None = None

    @property
    def offset_ms(self) -> int:
        """Venue minus local, in ms (0 until measured, or where the exchange keeps none)."""
        return -int(self.exchange.options.get("timeDifference") or 0)

    def now_ms(self) -> int:
        return self.local.now_ms() + self.offset_ms

    async def sync(self) -> bool:
        """Measure the venue's clock now; False if its time could not be read (the old
        measurement stays)."""
        diff = await resync_clock(self.exchange)
        self._synced_at = time.monotonic()
        if diff is not None:
            log.info("venue_clock", venue_minus_local_ms=-diff)
        return diff is not None

    async def sync_if_due(self) -> None:
        if self._synced_at is None or time.monotonic() - self._synced_at >= self.sync_every_s:
            await self.sync()
