"""Reconciliation of the ledger with the venue: pure comparisons, no I/O."""

from __future__ import annotations

from decimal import Decimal as D

from bot.domain import VenueState
from bot.reconcile import reconcile

SYMS = ["BTC/USDT", "ETH/USDT"]


def venue(usdt: str, btc: str = "0", eth: str = "0",
          orders: tuple[tuple[str, str, str], ...] = ()) -> VenueState:
    return VenueState({"USDT": D(usdt), "BTC": D(btc), "ETH": D(eth)}, orders,
                      {"BTC/USDT": D("30000"), "ETH/USDT": D("2000")})


def test_agreeing_books_pass() -> None:
    r = reconcile(SYMS, "USDT", {"BTC/USDT": D("0.5")}, D("100"), {"sb1"},
                  venue("100", btc="0.5", orders=(("sb1", "BTC/USDT", "9"),)))
    assert r.agree and r.problems == () and r.describe() == "ledger and venue agree"


def test_position_mismatch_names_asset_and_both_amounts() -> None:
    r = reconcile(SYMS, "USDT", {"BTC/USDT": D("0.5")}, D("100"), set(), venue("100", "0.4"))
    assert not r.agree
    assert r.problems == ("BTC: ledger holds 0.5, venue 0.4",)


def test_an_extra_satoshi_is_a_mismatch() -> None:
    r = reconcile(SYMS, "USDT", {}, D("100"), set(), venue("100", eth="0.00000002"))
    assert not r.agree and "ETH" in r.problems[0]


def test_missing_cash_blocks_but_a_deposit_is_adopted() -> None:
    short = reconcile(SYMS, "USDT", {}, D("100"), set(), venue("99.5"))
    assert not short.agree and "USDT: ledger holds 100, venue only 99.5" in short.problems
    more = reconcile(SYMS, "USDT", {}, D("100"), set(), venue("150"))
    assert more.agree and more.cash_adopted == D("50")


def test_unknown_open_order_is_flagged() -> None:
    r = reconcile(SYMS, "USDT", {}, D("100"), {"sb1"},
                  venue("100", orders=(("sb1", "BTC/USDT", "1"), ("manual", "ETH/USDT", "2"))))
    assert not r.agree and r.unknown_orders == (("manual", "ETH/USDT", "2"),)


def test_orders_in_doubt_defer_the_verdict() -> None:
    r = reconcile(SYMS, "USDT", {"BTC/USDT": D("1")}, D("0"), set(), venue("100"), in_doubt=2)
    assert r.agree and r.deferred and "2 order(s) in doubt" in r.describe()


def test_first_run_adopts_the_venue_balances_at_its_prices() -> None:
    r = reconcile(SYMS, "USDT", {}, D("10000"), set(), venue("2500", btc="0.1"), first_run=True)
    assert r.agree
    assert r.cash_adopted == D("-7500")  # the configured paper balance is replaced
    assert dict(r.adopted_positions) == {"BTC/USDT": (D("0.1"), D("30000"))}
