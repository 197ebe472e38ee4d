"""The margin model of linear (USDT-margined) perpetuals. Pure.

After Binance's "How to Calculate Liquidation Price of USDⓈ-M Futures Contracts"
(https://www.binance.com/en/support/faq/b3c689c1f50a44cabb3a84e663b81d93), one-way mode:

    LP = (WB - TMM + UPNL + cum - side * Q * EP) / (Q * MMR - side * Q)

- ``WB``: the wallet balance behind the position. Isolated: the position's own margin (its
  initial margin, ``Q * EP / leverage``). Cross: the account's wallet balance.
- ``TMM``, ``UPNL``: maintenance margin and unrealized P&L of the account's other positions
  (cross only; zero isolated).
- ``MMR``, ``cum``: the maintenance rate and amount of the position's bracket
  (``MarketSpec.brackets``), chosen by its notional.
- ``side``: 1 long, -1 short; ``Q`` the absolute size; ``EP`` the entry price.

At LP the position's margin equals its maintenance margin, ``MMR * Q * LP - cum``; the venue
then closes it and keeps what is left of that margin (the insurance clearance fee), so an
isolated position that is liquidated loses its whole margin.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from bot.domain import ZERO, MarginBracket, MarginMode, MarketSpec

# Binance's first USDT-M bracket for BTCUSDT (leverageBracket, 2022): what a backtest assumes
# when the market gives none.
DEFAULT_BRACKET = MarginBracket(Decimal("50000"), Decimal("125"), Decimal("0.004"), ZERO)
_DEFAULT_BRACKETS = (
    DEFAULT_BRACKET,
    MarginBracket(Decimal("250000"), Decimal("100"), Decimal("0.005"), Decimal("50")),
    MarginBracket(Decimal("1000000"), Decimal("50"), Decimal("0.01"), Decimal("1300")),
    MarginBracket(Decimal("10000000"), Decimal("20"), Decimal("0.025"), Decimal("16300")),
    MarginBracket(Decimal("20000000"), Decimal("10"), Decimal("0.05"), Decimal("266300")),
    MarginBracket(Decimal("50000000"), Decimal("5"), Decimal("0.1"), Decimal("1266300")),
    MarginBracket(Decimal("100000000"), Decimal("4"), Decimal("0.125"), Decimal("2516300")),
    MarginBracket(Decimal("200000000"), Decimal("3"), Decimal("0.15"), Decimal("5016300")),
    MarginBracket(Decimal("300000000"), Decimal("2"), Decimal("0.25"), Decimal("25016300")),
    MarginBracket(Decimal("500000000"), Decimal("1"), Decimal("0.5"), Decimal("100016300")),
)


@dataclass(frozen=True, slots=True)
class MarginTerms:
    """How an account trades its perpetuals: the leverage it sets on the venue (per symbol,
    else ``leverage``) and isolated or cross margin."""

    leverage: Decimal = Decimal(20)
    mode: MarginMode = MarginMode.ISOLATED
    per_symbol: tuple[tuple[str, Decimal], ...] = ()

    def leverage_of(self, spec: MarketSpec, notional: Decimal = ZERO) -> Decimal:
        """The configured leverage, capped by what the bracket of ``notional`` allows."""
        wanted = dict(self.per_symbol).get(spec.symbol, self.leverage)
        return min(wanted, bracket(spec, notional).max_leverage)


def brackets_of(spec: MarketSpec) -> tuple[MarginBracket, ...]:
    return spec.brackets or _DEFAULT_BRACKETS


def bracket(spec: MarketSpec, notional: Decimal) -> MarginBracket:
    """The bracket whose cap covers ``notional`` (the last one beyond every cap)."""
    rows = brackets_of(spec)
    for row in rows:
        if abs(notional) <= row.notional_cap:
            return row
    return rows[-1]


def initial_margin(notional: Decimal, leverage: Decimal) -> Decimal:
    return abs(notional) / leverage


def maintenance_margin(spec: MarketSpec, quantity: Decimal, price: Decimal) -> Decimal:
    notional = abs(quantity) * price * spec.contract_size
    b = bracket(spec, notional)
    return max(notional * b.maint_rate - b.maint_amount, ZERO)


def liquidation_price(spec: MarketSpec, quantity: Decimal, entry: Decimal,
                      wallet: Decimal, others_mm: Decimal = ZERO,
                      others_upnl: Decimal = ZERO) -> Decimal | None:
    """Where the mark price liquidates a position of signed ``quantity`` entered at
    ``entry`` with ``wallet`` behind it (see the module's formula). None when flat or when
    no price can liquidate it (a long with more margin than its notional)."""
    if quantity == 0:
        return None
    side = 1 if quantity > 0 else -1
    q = abs(quantity) * spec.contract_size
    b = bracket(spec, q * entry)
    num = wallet - others_mm + others_upnl + b.maint_amount - side * q * entry
    den = q * b.maint_rate - side * q
    lp = num / den
    return lp if lp > 0 else None


def isolated_wallet(spec: MarketSpec, quantity: Decimal, entry: Decimal,
                    leverage: Decimal) -> Decimal:
    """An isolated position's margin: its initial margin at entry."""
    return initial_margin(abs(quantity) * entry * spec.contract_size, leverage)


def position_liquidation(spec: MarketSpec, terms: MarginTerms, quantity: Decimal,
                         entry: Decimal, account_wallet: Decimal,
                         others: tuple[Decimal, Decimal] = (ZERO, ZERO)) -> Decimal | None:
    """The liquidation price of one position as the account trades it: isolated on its own
    margin; cross on the account's wallet, less the maintenance margin of the account's
    ``others`` positions and plus their unrealized P&L (``cross_others``): a losing position
    elsewhere pulls this one's liquidation price nearer."""
    if terms.mode is MarginMode.ISOLATED:
        lev = terms.leverage_of(spec, abs(quantity) * entry * spec.contract_size)
        return liquidation_price(spec, quantity, entry, isolated_wallet(spec, quantity, entry,
                                                                          lev))
    return liquidation_price(spec, quantity, entry, account_wallet, *others)


def cross_others(positions: Iterable[tuple[MarketSpec, Decimal, Decimal, Decimal]]
                 ) -> tuple[Decimal, Decimal]:
    """(maintenance margin, unrealized P&L) of positions given as (spec, signed quantity,
    entry, mark): what Binance's cross formula calls TMM and UPNL of the other positions."""
    mm = upnl = ZERO
    for spec, qty, entry, mark in positions:
        mm += maintenance_margin(spec, qty, mark)
        upnl += unrealized(qty, entry, mark, spec.contract_size)
    return mm, upnl


def unrealized(quantity: Decimal, entry: Decimal, mark: Decimal,
               contract_size: Decimal = Decimal(1)) -> Decimal:
    return quantity * contract_size * (mark - entry)


def margin_ratio(spec: MarketSpec, terms: MarginTerms, quantity: Decimal, entry: Decimal,
                 mark: Decimal, account_equity: Decimal) -> float:
    """Maintenance margin over the margin that stands behind the position (1.0: liquidated).
    Isolated: the position's margin plus its unrealized P&L; cross: the account's equity."""
    if quantity == 0:
        return 0.0
    mm = maintenance_margin(spec, quantity, mark)
    if terms.mode is MarginMode.ISOLATED:
        lev = terms.leverage_of(spec, abs(quantity) * entry * spec.contract_size)
        balance = (isolated_wallet(spec, quantity, entry, lev)
                   + unrealized(quantity, entry, mark, spec.contract_size))
    else:
        balance = account_equity
    if balance <= 0:
        return float("inf")
    return float(mm / balance)
