"""What a venue says: an order's new state with its fills, and its side of a reconciliation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from decimal import Decimal

from bot.domain.message import message
from bot.domain.trading import CashFlow, Fill, Order


@message
class OrderUpdate:
    """What a venue said about one order: a new state and any fills."""

    order: Order
    fills: tuple[Fill, ...] = ()
    note: str = ""


@message
class VenueState:
    """The venue's side of a reconciliation: total balances (free + locked) per asset, the
    open orders as (client id, symbol, exchange id), and last prices for adopting holdings.

    A perpetuals account also has ``positions`` (signed contracts by symbol; None for spot,
    whose holdings are balances) with their entry prices, its quote balance is the wallet
    (realized P&L, fees and funding; unrealized P&L excluded), and ``cash_flows`` are the
    funding payments the venue booked since the newest one the ledger holds."""

    balances: Mapping[str, Decimal]
    open_orders: tuple[tuple[str, str, str], ...]
    prices: Mapping[str, Decimal] = field(default_factory=dict)
    positions: Mapping[str, Decimal] | None = None
    entries: Mapping[str, Decimal] = field(default_factory=dict)
    cash_flows: tuple[CashFlow, ...] = ()
    liquidations: Mapping[str, Decimal] = field(default_factory=dict)  # the venue's, if any
