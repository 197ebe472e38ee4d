"""The dead-man's switch keeps the venue's countdown moving while alive and disarms on stop;
at a venue without the endpoint (Binance spot, through the real ccxt class) it stands aside."""

from __future__ import annotations

import asyncio
from typing import Any

import ccxt.async_support as ccxt_async

from bot.exchange.deadman import DeadMansSwitch


class CountdownVenue:
    """The one ccxt call the switch makes, recorded (ccxt's kraken-style signature)."""

    id = "countdown"
    has = {"cancelAllOrdersAfter": True}

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def cancel_all_orders_after(self, timeout: int, params: Any = None) -> dict[str, Any]:
        self.calls.append(timeout)
        return {}


async def test_refreshes_at_a_third_of_the_timeout_then_disarms() -> None:
    venue = CountdownVenue()
    switch = DeadMansSwitch(venue, timeout_s=0.3)
    assert switch.start()
    await asyncio.sleep(0.35)
    await switch.close()
    assert venue.calls[:-1] == [300] * len(venue.calls[:-1])
    assert 3 <= len(venue.calls) - 1 <= 5  # ~every 100 ms for 350 ms
    assert venue.calls[-1] == 0  # disarmed on a clean stop


async def test_binance_spot_has_no_countdown_so_the_switch_stands_aside() -> None:
    exchange = ccxt_async.binance()
    try:
        switch = DeadMansSwitch(exchange, timeout_s=60)
        assert not switch.supported and not switch.start()
    finally:
        await exchange.close()


async def test_off_unless_configured() -> None:
    assert not DeadMansSwitch(CountdownVenue(), timeout_s=0).start()
