"""The engine's own error types. ccxt exceptions are translated into these at the boundary
(``bot/exchange/errors.py``), so nothing past the adapters imports ccxt."""

from __future__ import annotations


class StackbotError(Exception):
    """Base class of every error the service raises on purpose."""


class ConfigError(StackbotError):
    """The configuration is invalid; the message names the key."""


class DataError(StackbotError):
    """A candle file or stream is malformed; the message names file, row and reason."""


class LedgerError(StackbotError):
    """The ledger could not take a write. The engine stops opening positions."""


class ExchangeError(StackbotError):
    """Base class of translated exchange errors."""

    retryable: bool = False


class ExchangeUnavailable(ExchangeError):
    """Network trouble, maintenance, 5xx: the request may be retried (reads) or resolved."""

    retryable = True


class RateLimited(ExchangeUnavailable):
    """The venue asked us to slow down (HTTP 429/418)."""


class RequestTimedOut(ExchangeUnavailable):
    """No answer in time. For an order the outcome is unknown: resolve it, never resend."""


class AuthenticationFailed(ExchangeError):
    """Keys missing, wrong, or without permission."""


class OrderRejected(ExchangeError):
    """The venue refused the order (bad parameters, minimums, precision)."""


class InsufficientFunds(OrderRejected):
    """The account cannot pay for the order."""


class OrderNotFound(ExchangeError):
    """The venue does not know the order."""


class UnknownSymbol(ExchangeError):
    """The venue does not list the symbol."""
