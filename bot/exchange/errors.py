"""ccxt exceptions -> the engine's own error types, at the boundary."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import ccxt

from bot import errors as e

T = TypeVar("T")

# Most specific first: ccxt's classes inherit from one another.
_MAP: tuple[tuple[type[BaseException], type[e.ExchangeError]], ...] = (
    (ccxt.RateLimitExceeded, e.RateLimited),
    (ccxt.DDoSProtection, e.RateLimited),
    (ccxt.RequestTimeout, e.RequestTimedOut),
    (ccxt.NetworkError, e.ExchangeUnavailable),
    (ccxt.AuthenticationError, e.AuthenticationFailed),
    (ccxt.PermissionDenied, e.AuthenticationFailed),
    (ccxt.AccountSuspended, e.AuthenticationFailed),
    (ccxt.InsufficientFunds, e.InsufficientFunds),
    (ccxt.OrderNotFound, e.OrderNotFound),
    (ccxt.BadSymbol, e.UnknownSymbol),
    (ccxt.InvalidOrder, e.OrderRejected),
    (ccxt.BadRequest, e.OrderRejected),
    (ccxt.ExchangeError, e.ExchangeError),
    (ccxt.BaseError, e.ExchangeError),
)


def translate(exc: BaseException) -> e.ExchangeError:
    for ccxt_type, ours in _MAP:
        if isinstance(exc, ccxt_type):
            return ours(f"{type(exc).__name__}: {exc}")
    return e.ExchangeError(f"{type(exc).__name__}: {exc}")


async def call(awaitable: Awaitable[T]) -> T:
    """Await a ccxt call; its errors come out as ``bot.errors.ExchangeError`` subclasses."""
    try:
        return await awaitable
    except ccxt.BaseError as exc:
        raise translate(exc) from exc
