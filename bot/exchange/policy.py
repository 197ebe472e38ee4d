"""What stackbot does with each ccxt error class, derived from ccxt's own exception tree.

ccxt turns a venue's answer (HTTP status, ``{"code", "msg"}`` body) into one of its classes
through the exchange's ``exceptions`` map (Binance's -1000 -> ``OperationFailed``, -1021 ->
``InvalidNonce`` ...). We keep no list of venue codes: a rule is attached to a few classes of
the tree, and every other class takes the rule of its nearest ancestor that has one. A class
ccxt adds later is therefore covered by its parent's rule the day it appears.

Two verdicts per class:

- ``read``: a read (candles, balances, order lookups) is retried, retried after a clock
  resync, failed (the caller goes on: a read never ends a run), or ends the run (only
  configuration and permission errors);
- ``order``: what a failed ``create_order`` means: outcome unknown (looked up by client id,
  never resent), not placed (clock resync, then sent again under the same client id),
  rejected, rejected with a reconciliation, or the end of the run.

``python -m bot.exchange.policy`` prints the table that ``docs/faults.md`` carries; a test
checks that the two agree and that every ccxt class is in it.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from bot import errors as e
from bot.errors import OrderAction, ReadAction


@dataclass(frozen=True, slots=True)
class Rule:
    error: type[e.VenueError]
    read: ReadAction
    order: OrderAction
    why: str


# Rules by ccxt class name. Every class not named here inherits its nearest ancestor's rule.
RULES: Mapping[str, Rule] = {
    "BaseError": Rule(e.ExchangeError, ReadAction.FAIL, OrderAction.UNKNOWN,
                      "unclassified: nothing is assumed about an order"),
    "ExchangeError": Rule(e.ExchangeError, ReadAction.FAIL, OrderAction.UNKNOWN,
                          "an error body ccxt could not place: the order may exist"),
    "OperationFailed": Rule(e.ExchangeUnavailable, ReadAction.RETRY, OrderAction.UNKNOWN,
                            "the venue failed to process it (Binance -1000, -1001, -1006, "
                            "-1008; HTTP 5XX: execution status unknown)"),
    "RequestTimeout": Rule(e.RequestTimedOut, ReadAction.RETRY, OrderAction.UNKNOWN,
                           "no answer in time (Binance -1007: send and execution status "
                           "unknown)"),
    "DDoSProtection": Rule(e.RateLimited, ReadAction.RETRY_AFTER, OrderAction.UNKNOWN,
                           "HTTP 418 IP ban or 429 (Binance -1003)"),
    "RateLimitExceeded": Rule(e.RateLimited, ReadAction.RETRY_AFTER, OrderAction.UNKNOWN,
                              "HTTP 429 (Binance -1003, -1015)"),
    "InvalidNonce": Rule(e.ClockSkew, ReadAction.RESYNC, OrderAction.RESEND,
                         "timestamp outside the recvWindow (Binance -1021): refused before "
                         "processing"),
    "ChecksumError": Rule(e.ExchangeUnavailable, ReadAction.RETRY, OrderAction.UNKNOWN,
                          "a websocket order book failed its checksum: resubscribe"),
    "AuthenticationError": Rule(e.AuthenticationFailed, ReadAction.FATAL, OrderAction.FATAL,
                                "bad or missing keys, signature (Binance -1022, -2014, -2015)"),
    "AccountSuspended": Rule(e.AccountSuspended, ReadAction.FATAL, OrderAction.FATAL,
                             "the account is suspended or disabled"),
    "RestrictedLocation": Rule(e.AuthenticationFailed, ReadAction.FATAL, OrderAction.FATAL,
                               "the venue does not serve this location"),
    "ManualInteractionNeeded": Rule(e.AuthenticationFailed, ReadAction.FATAL,
                                    OrderAction.FATAL,
                                    "the venue wants the account holder to act on its site"),
    "BadSymbol": Rule(e.UnknownSymbol, ReadAction.FATAL, OrderAction.FATAL,
                      "a configured symbol the venue does not list (Binance -1121)"),
    "InvalidProxySettings": Rule(e.ExchangeMisconfigured, ReadAction.FATAL, OrderAction.FATAL,
                                 "the client's own proxy settings"),
    "BadRequest": Rule(e.OrderRejected, ReadAction.FAIL, OrderAction.REJECTED,
                       "malformed request, filter failure (Binance -11xx, -1013): the "
                       "matching engine never saw it"),
    "InvalidOrder": Rule(e.OrderRejected, ReadAction.FAIL, OrderAction.REJECTED,
                         "the venue refused the order (Binance -2010)"),
    "InsufficientFunds": Rule(e.InsufficientFunds, ReadAction.FAIL,
                              OrderAction.REJECTED_RECONCILE,
                              "-2010 'insufficient balance': our books may be wrong"),
    "OrderNotFound": Rule(e.OrderNotFound, ReadAction.FAIL, OrderAction.UNKNOWN,
                          "unknown order (Binance -2011, -2013): look it up"),
    "DuplicateOrderId": Rule(e.OrderRejected, ReadAction.FAIL, OrderAction.UNKNOWN,
                             "the client id is taken: an earlier send got through"),
    "OperationRejected": Rule(e.OrderRejected, ReadAction.FAIL, OrderAction.REJECTED,
                              "the venue declined the operation (market closed, no change)"),
    "NotSupported": Rule(e.OrderRejected, ReadAction.FAIL, OrderAction.REJECTED,
                         "ccxt refused before sending: the venue has no such call"),
    "ArgumentsRequired": Rule(e.OrderRejected, ReadAction.FAIL, OrderAction.REJECTED,
                              "ccxt refused before sending: an argument is missing"),
    "InvalidAddress": Rule(e.OrderRejected, ReadAction.FAIL, OrderAction.REJECTED,
                           "a withdrawal address (not used by the bot)"),
    "ExchangeClosedByUser": Rule(e.ExchangeError, ReadAction.FAIL, OrderAction.UNKNOWN,
                                 "we closed the client ourselves (shutdown)"),
    "UnsubscribeError": Rule(e.ExchangeError, ReadAction.FAIL, OrderAction.UNKNOWN,
                             "a websocket unsubscribe failed"),
}


@dataclass(frozen=True, slots=True)
class Policy:
    ccxt_class: str
    parent: str
    rule_from: str  # the class whose rule applies (itself or an ancestor)
    rule: Rule


def _ccxt_errors() -> Any:
    from ccxt.base import errors as ccxt_errors

    return ccxt_errors


def policy_for(cls: type[BaseException]) -> Policy:
    """The rule of ``cls`` or of its nearest ancestor with one (ccxt classes only)."""
    for klass in cls.__mro__:
        rule = RULES.get(klass.__name__)
        if rule is not None and klass.__module__ == _ccxt_errors().__name__:
            parent = cls.__mro__[1].__name__ if len(cls.__mro__) > 1 else ""
            return Policy(cls.__name__, parent, klass.__name__, rule)
    base = _ccxt_errors().BaseError
    return Policy(cls.__name__, "", "BaseError", RULES[base.__name__])


def ccxt_classes() -> Iterator[type[BaseException]]:
    """Every exception class ccxt defines, walked depth-first from ``BaseError``."""
    mod = _ccxt_errors()

    def walk(cls: type[BaseException]) -> Iterator[type[BaseException]]:
        yield cls
        for sub in sorted(cls.__subclasses__(), key=lambda c: c.__name__):
            if sub.__module__ == mod.__name__:
                yield from walk(sub)

    yield from walk(mod.BaseError)
    # anything in the module outside that tree would be a ccxt change we must look at
    for _, cls in inspect.getmembers(mod, inspect.isclass):
        if issubclass(cls, BaseException) and cls.__module__ == mod.__name__ \
                and not issubclass(cls, mod.BaseError):
            yield cls


def policy_table() -> list[Policy]:
    return [policy_for(c) for c in ccxt_classes()]


def translate(exc: BaseException) -> e.VenueError:
    """A ccxt exception as the engine's error type, carrying its class name and actions."""
    p = policy_for(type(exc))
    err = p.rule.error(f"{p.ccxt_class}: {exc}")
    err.ccxt_class = p.ccxt_class
    err.read, err.order = p.rule.read, p.rule.order
    return err


def venue_codes(exchange: Any) -> list[tuple[str, str, str, Policy]]:
    """The exchange's own map, code or message -> ccxt class -> our policy: (section, match,
    key, policy), e.g. ("spot.exact", "exact", "-1007", ...)."""
    out: list[tuple[str, str, str, Policy]] = []

    def walk(node: Mapping[str, Any], path: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, f"{path}.{key}" if path else key)
            elif inspect.isclass(value) and issubclass(value, BaseException):
                out.append((path, path.rsplit(".", 1)[-1], str(key), policy_for(value)))

    walk(exchange.exceptions or {}, "")
    return out


def markdown() -> str:
    rows = ["| ccxt class | parent | rule from | read | order |", "|---|---|---|---|---|"]
    for p in policy_table():
        rows.append(f"| `{p.ccxt_class}` | {p.parent and f'`{p.parent}`'} | `{p.rule_from}` | "
                    f"{p.rule.read.value} | {p.rule.order.value} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - prints the docs table
    sys.stdout.write(markdown() + "\n")
