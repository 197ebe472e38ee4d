"""ccxt exceptions -> the engine's own error types, at the boundary. The mapping is the policy
derived from ccxt's exception tree (``bot/exchange/policy.py``)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import ccxt

from bot.exchange.policy import translate

T = TypeVar("T")
__all__ = ["call", "translate"]


async def call(awaitable: Awaitable[T]) -> T:
    """Await a ccxt call; its errors come out as ``bot.errors.VenueError`` subclasses:
    ``ExchangeError`` (the run goes on) or ``FatalExchangeError`` (it ends)."""
    try:
        return await awaitable
    except ccxt.BaseError as exc:
        raise translate(exc) from exc
