"""The error policy is derived from ccxt's exception tree, and docs/faults.md carries all of it."""

from __future__ import annotations

import re
from pathlib import Path

import ccxt
import pytest

from bot.config import ExchangeSettings
from bot.errors import ExchangeUnavailable, FatalExchangeError, OrderAction, ReadAction
from bot.exchange.client import make_exchange
from bot.exchange.policy import (
    RULES,
    ccxt_classes,
    policy_for,
    policy_table,
    translate,
    venue_codes,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "faults.md"


def _docs_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in DOCS.read_text().splitlines():
        m = re.match(r"\| `(\w+)` \| [^|]* \| `\w+` \| ([^|]+) \| ([^|]+) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2).strip(), m.group(3).strip())
    return rows


def test_every_ccxt_exception_class_is_in_the_docs_table_as_the_code_says() -> None:
    rows = _docs_rows()
    classes = [c.__name__ for c in ccxt_classes()]
    assert len(classes) >= 40  # the walk found ccxt's tree, not an empty module
    assert sorted(rows) == sorted(classes), set(rows) ^ set(classes)
    for p in policy_table():
        assert rows[p.ccxt_class] == (p.rule.read.value, p.rule.order.value), p.ccxt_class


def test_rules_name_real_ccxt_classes() -> None:
    names = {c.__name__ for c in ccxt_classes()}
    assert set(RULES) <= names, set(RULES) - names


def test_a_class_ccxt_adds_later_takes_its_parents_rule() -> None:
    class BrandNewOutage(ccxt.ExchangeNotAvailable):
        pass

    class BrandNewRefusal(ccxt.InvalidOrder):
        pass

    assert policy_for(BrandNewOutage).rule.read is ReadAction.RETRY
    assert policy_for(BrandNewOutage).rule.order is OrderAction.UNKNOWN
    assert policy_for(BrandNewRefusal).rule.order is OrderAction.REJECTED


def test_operation_failed_is_transient_although_it_is_not_a_network_error() -> None:
    """The bug the issue found: ccxt maps Binance -1000/-1001 to OperationFailed, the parent
    of NetworkError. It must be retried on reads and leave orders in doubt."""
    assert not issubclass(ccxt.OperationFailed, ccxt.NetworkError)
    err = translate(ccxt.OperationFailed('binance {"code":-1000,"msg":"An unknown error"}'))
    assert isinstance(err, ExchangeUnavailable)
    assert (err.read, err.order, err.ccxt_class) == (ReadAction.RETRY, OrderAction.UNKNOWN,
                                                     "OperationFailed")


@pytest.mark.parametrize("cls", ["AuthenticationError", "PermissionDenied", "AccountSuspended",
                                 "AccountNotEnabled", "BadSymbol"])
def test_only_configuration_and_permission_end_a_run(cls: str) -> None:
    err = translate(getattr(ccxt, cls)("x"))
    assert isinstance(err, FatalExchangeError) and err.fix
    fatal = {p.ccxt_class for p in policy_table() if p.rule.read is ReadAction.FATAL}
    assert fatal == {"AuthenticationError", "AccountSuspended", "PermissionDenied",
                     "AccountNotEnabled", "BadSymbol", "InvalidProxySettings",
                     "ManualInteractionNeeded", "RestrictedLocation"}


def test_binances_own_map_is_walked_and_its_transient_codes_are_retried() -> None:
    rows = {(section, key): p for section, _, key, p in venue_codes(ccxt.binance())}
    assert len(rows) > 100
    for code in ("-1000", "-1001", "-1006", "-1007", "-1003"):
        assert rows[("exact", code)].rule.read in (ReadAction.RETRY, ReadAction.RETRY_AFTER)
    assert rows[("spot.exact", "-1008")].rule.read is ReadAction.RETRY
    assert rows[("exact", "-1021")].rule.order is OrderAction.RESEND


def test_a_rebased_url_keeps_binances_spot_map() -> None:
    ex = make_exchange(ExchangeSettings(url="http://127.0.0.1:1"), with_ws=False)
    assert ex.exceptions["exact"]["-1008"] is ccxt.OperationFailed
    assert "-1008" not in ccxt.binance().exceptions["exact"]  # ccxt's own map is untouched


def test_a_handler_for_exchange_errors_cannot_swallow_a_fatal_one() -> None:
    """The two branches of VenueError never catch each other: every rule whose read or order
    action ends the run raises a FatalExchangeError, which no ``except ExchangeError`` takes;
    every other rule raises an ExchangeError."""
    from bot.errors import ExchangeError, VenueError
    from bot.exchange.policy import RULES

    assert not issubclass(FatalExchangeError, ExchangeError)
    assert not issubclass(ExchangeError, FatalExchangeError)
    fatal = [n for n, r in RULES.items() if ReadAction.FATAL in (r.read,) or
             r.order is OrderAction.FATAL]
    assert fatal  # the check is not vacuous
    for name, rule in RULES.items():
        assert issubclass(rule.error, VenueError), name
        ends = rule.read is ReadAction.FATAL or rule.order is OrderAction.FATAL
        assert issubclass(rule.error, FatalExchangeError) == ends, name
        assert issubclass(rule.error, ExchangeError) == (not ends), name
