"""ccxt market structures -> ``MarketSpec``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from bot.domain import InstrumentKind, MarginBracket, MarketSpec
from bot.errors import UnknownSymbol
from bot.exchange.errors import call
from bot.logs import get_logger

log = get_logger("markets")


def _dec(value: Any, default: str) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal(default)


def _step(value: Any, mode: int) -> Decimal:
    """ccxt precision is either a step (TICK_SIZE mode) or a number of decimals."""
    if value in (None, ""):
        return Decimal("0.00000001")
    from ccxt.base.decimal_to_precision import TICK_SIZE

    if mode == TICK_SIZE:
        return Decimal(str(value))
    return Decimal(1).scaleb(-int(value))


def brackets_from_tiers(tiers: Sequence[Mapping[str, Any]]) -> tuple[MarginBracket, ...]:
    """ccxt's leverage tiers (Binance ``leverageBracket``) as margin brackets; the maintenance
    amount (Binance's ``cum``) is only in the venue's own row."""
    return tuple(MarginBracket(_dec(t.get("maxNotional"), "0"), _dec(t.get("maxLeverage"), "1"),
                               _dec(t.get("maintenanceMarginRate"), "0"),
                               _dec((t.get("info") or {}).get("cum"), "0")) for t in tiers)


def spec_from_ccxt(market: Mapping[str, Any], precision_mode: int,
                   brackets: tuple[MarginBracket, ...] = ()) -> MarketSpec:
    limits = market.get("limits") or {}
    swap = bool(market.get("swap")) and bool(market.get("linear"))
    return MarketSpec(
        symbol=market["symbol"], base=market["base"], quote=market["quote"],
        amount_step=_step((market.get("precision") or {}).get("amount"), precision_mode),
        price_tick=_step((market.get("precision") or {}).get("price"), precision_mode),
        min_qty=_dec((limits.get("amount") or {}).get("min"), "0"),
        min_notional=_dec((limits.get("cost") or {}).get("min"), "0"),
        maker_fee=_dec(market.get("maker"), "0.001"),
        taker_fee=_dec(market.get("taker"), "0.001"),
        kind=InstrumentKind.SWAP if swap else InstrumentKind.SPOT,
        contract_size=_dec(market.get("contractSize"), "1") if swap else Decimal(1),
        brackets=brackets if swap else (),
        settle=str(market.get("settle") or "") if swap else "",
    )


def ccxt_markets(exchange: Any) -> Callable[[Sequence[str]], Awaitable[Mapping[str, MarketSpec]]]:
    """A ``MarketSource`` reading specs from the exchange."""

    async def source(symbols: Sequence[str]) -> Mapping[str, MarketSpec]:
        markets = await call(exchange.load_markets())
        missing = [s for s in symbols if s not in markets]
        if missing:
            raise UnknownSymbol(f"{exchange.id} does not list {', '.join(missing)}")
        swaps = [s for s in symbols if markets[s].get("swap")]
        tiers: Mapping[str, Any] = {}
        if swaps and exchange.apiKey:  # the maintenance brackets behind liquidation prices:
            tiers = await call(exchange.fetch_leverage_tiers(swaps))  # a signed call
        elif swaps:
            log.warning("brackets_assumed", symbols=swaps,
                        why="the venue gives its leverage brackets to signed requests only, "
                        "and there are no keys: Binance's BTCUSDT brackets are assumed")
        return {s: spec_from_ccxt(markets[s], exchange.precisionMode,
                                  brackets_from_tiers(tiers.get(s) or ())) for s in symbols}

    return source
