"""The engine's own error types. ccxt exceptions are translated into these at the boundary
(``bot/exchange/errors.py``, by the policy in ``bot/exchange/policy.py``), so nothing past the
adapters imports ccxt.

Every translated error says what to do with it: ``read`` (retry, resync the clock and retry,
fail this call, or end the run) and ``order`` (what a failed ``create_order`` means). The
``ccxt_class`` it came from is kept for logs and metrics.
"""

from __future__ import annotations

from enum import StrEnum


class ReadAction(StrEnum):
    """What a failed read does."""

    RETRY = "retry (jittered backoff)"
    RETRY_AFTER = "retry after `Retry-After`"
    RESYNC = "resync clock, retry"
    FAIL = "fail this call, go on"
    FATAL = "end the run"


class OrderAction(StrEnum):
    """What a failed ``create_order`` means."""

    UNKNOWN = "outcome unknown: look up by client id"
    RESEND = "not placed: resync clock, send again (same client id)"
    REJECTED = "rejected"
    REJECTED_RECONCILE = "rejected, then reconcile"
    FATAL = "end the run"


class StackbotError(Exception):
    """Base class of every error the service raises on purpose."""


class ConfigError(StackbotError):
    """The configuration is invalid; the message names the key."""


class DataError(StackbotError):
    """A candle file or stream is malformed; the message names file, row and reason."""


class LedgerError(StackbotError):
    """The ledger could not take a write. The engine stops opening positions."""


class VenueError(StackbotError):
    """Base class of every translated exchange error, with what the policy says to do.

    Two branches that never catch each other: ``ExchangeError`` (the run goes on) and
    ``FatalExchangeError`` (configuration or permission: the run ends). A handler for the
    first cannot swallow the second by accident; code that must survive both (a quiet probe,
    a background refresh) names ``VenueError``."""

    retryable: bool = False
    ccxt_class: str = ""  # the ccxt class it was translated from ("" if raised by us)
    read: ReadAction = ReadAction.FAIL  # set per instance from the policy at translation
    order: OrderAction = OrderAction.UNKNOWN


class ExchangeError(VenueError):
    """A call failed and the run goes on; nothing more is known.

    As an order error: the outcome is unknown (resolved by client id). As a read: this call
    failed and is not retried here; the caller carries on (a read never ends a run)."""


class ExchangeUnavailable(ExchangeError):
    """Network trouble, maintenance, 5xx, the venue's own "try again": reads are retried, and
    an order's outcome is unknown (resolved by client id, never by resending)."""

    retryable = True
    read = ReadAction.RETRY


class RateLimited(ExchangeUnavailable):
    """The venue asked us to slow down (HTTP 429, or 418: an IP ban). ``Retry-After`` rules."""

    read = ReadAction.RETRY_AFTER


class RequestTimedOut(ExchangeUnavailable):
    """No answer in time (or Binance -1007). For an order the outcome is unknown."""


class ClockSkew(ExchangeUnavailable):
    """The request's timestamp was outside the venue's recvWindow (Binance -1021): refused
    before it was processed. Resync the clock, then it may be sent again (same client id)."""

    read = ReadAction.RESYNC
    order = OrderAction.RESEND


class FatalExchangeError(VenueError):
    """Configuration or permission: retrying cannot help, the run ends. ``fix`` says what the
    operator must change."""

    fix: str = "check the exchange settings"
    read = ReadAction.FATAL
    order = OrderAction.FATAL


class AuthenticationFailed(FatalExchangeError):
    """Keys missing, wrong, without permission, or the account is suspended."""

    fix = ("check exchange.api_key and exchange.secret (or the secrets file), the key's "
           "permissions (spot trading enabled) and its IP whitelist")


class AccountSuspended(AuthenticationFailed):
    fix = "the venue has suspended or disabled this account: contact the venue"


class UnknownSymbol(FatalExchangeError):
    """The venue does not list a configured symbol."""

    fix = "remove the symbol from --symbols / symbols, or correct its spelling (BASE/QUOTE)"


class ExchangeMisconfigured(FatalExchangeError):
    """The client itself is set up wrongly (a proxy setting, say)."""

    fix = "check the exchange section of the configuration (url, proxy)"


class OrderRejected(ExchangeError):
    """The venue refused the order (bad parameters, minimums, precision): it was not placed."""

    order = OrderAction.REJECTED


class InsufficientFunds(OrderRejected):
    """The account cannot pay for the order. Ledger and venue may disagree: reconcile."""

    order = OrderAction.REJECTED_RECONCILE


class OrderNotFound(ExchangeError):
    """The venue does not know the order (or no longer lists it as open)."""


class RegistryError(StackbotError):
    """A checkpoint is missing, altered, or does not fit this code's feature definition."""


class ModelError(StackbotError):
    """The models could not score (a backtest's look-ahead process failed)."""
