"""Dead-man's switch: the venue's countdown cancel-all (ccxt ``cancelAllOrdersAfter``).

While the bot is alive it keeps pushing the countdown forward (every third of the timeout);
if the process dies or hangs, the venue cancels the account's resting orders when the
countdown runs out. On a clean stop the countdown is disarmed (timeout 0).

Off by default (``exchange.dead_man_s = 0``): it also cancels resting protective stops, so it
suits strategies that rest entry orders more than ones that rely on venue stops. Binance spot
has no such endpoint; where the exchange lacks it, the bot says so once at start and carries on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bot.errors import VenueError
from bot.exchange.errors import call
from bot.logs import get_logger

log = get_logger("exchange.deadman")


class DeadMansSwitch:
    def __init__(self, exchange: Any, timeout_s: float) -> None:
        self.exchange = exchange
        self.timeout_ms = int(timeout_s * 1000)
        self.refreshes = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def supported(self) -> bool:
        return bool(self.exchange.has.get("cancelAllOrdersAfter"))  # ccxt's capability map

    def start(self) -> bool:
        if self.timeout_ms <= 0:
            return False
        if not self.supported:
            log.warning("dead_man_unsupported", exchange=self.exchange.id,
                        note="no countdown cancel-all at this venue; resting orders stay if "
                        "the bot dies")
            return False
        self._task = asyncio.create_task(self._run())
        return True

    async def _run(self) -> None:
        while True:
            try:
                await call(self.exchange.cancel_all_orders_after(self.timeout_ms))
                self.refreshes += 1
            except VenueError as exc:  # try again sooner: the countdown is running
                log.warning("dead_man_refresh_failed", error=str(exc)[:200])
                await asyncio.sleep(self.timeout_ms / 6000)
                continue
            await asyncio.sleep(self.timeout_ms / 3000)

    async def close(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        try:
            await call(self.exchange.cancel_all_orders_after(0))  # disarm
        except VenueError as exc:
            log.warning("dead_man_disarm_failed", error=str(exc)[:200])
