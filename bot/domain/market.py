"""Market data and venues' rules: timeframes, candles, gaps, feed states, the regime, market
specs and a loaded candle series. Candle prices are floats (they feed numeric features).
Times are integer milliseconds since the Unix epoch, UTC."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from pathlib import Path

from bot.domain.message import message

ZERO = Decimal(0)

TIMEFRAME_MS: dict[str, int] = {
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
}


def timeframe_ms(timeframe: str) -> int:
    """Milliseconds in one candle of ``timeframe``; a clear error for an unknown one."""
    try:
        return TIMEFRAME_MS[timeframe]
    except KeyError:
        known = ", ".join(TIMEFRAME_MS)
        raise ValueError(f"unknown timeframe {timeframe!r}; known: {known}") from None



class Mode(StrEnum):
    BACKTEST = "backtest"
    PAPER = "paper"
    LIVE = "live"


@message
class MarkBar:
    """The mark price over one candle (perpetuals): what the venue computes unrealized P&L
    and liquidation on, apart from the traded price."""

    open: float
    high: float
    low: float
    close: float


@message
class FundingRate:
    """A perpetual's funding at ``ts`` (epoch ms): ``rate`` of the position's notional at the
    mark price changes hands; positive means longs pay shorts."""

    symbol: str
    ts: int
    rate: float
    mark: float | None = None  # the venue's mark price at ``ts`` where it says (Binance does)


@message
class Candle:
    """One closed OHLCV candle. ``ts`` is the candle's open time. ``mark``: the mark-price bar
    over the same interval, where the instrument has one and it is known."""

    symbol: str
    timeframe: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    mark: MarkBar | None = None

    @property
    def close_ts(self) -> int:
        step = TIMEFRAME_MS.get(self.timeframe)  # several times a candle: no call on the way
        return self.ts + (step if step is not None else timeframe_ms(self.timeframe))


@message
class Gap:
    """Missing candles between two present ones: reported and handled, never bridged."""

    symbol: str
    timeframe: str
    after_ts: int  # open time of the last candle before the hole
    next_ts: int  # open time of the first candle after it

    @property
    def missing(self) -> int:
        return (self.next_ts - self.after_ts) // timeframe_ms(self.timeframe) - 1


@message
class Warmup:
    """Closed candles too old to trade on (history at start, a long backfill): they only
    bring the signal source up to date."""

    candles: tuple[Candle, ...]


class Regime(StrEnum):
    """The market regime a signal source sees. ``UNKNOWN`` when it has no regime model or its
    model is not confident; only ``BEAR`` blocks the ensemble strategy's entries."""

    UNKNOWN = "unknown"
    BEAR = "bear"
    NEUTRAL = "neutral"
    BULL = "bull"


class FeedState(StrEnum):
    FALLBACK = "fallback"  # the websocket failed or went silent: polling REST
    WS_RESTORED = "ws_restored"  # back on the websocket
    STALE = "stale"  # reads keep failing: no fresh data, no entries
    FRESH = "fresh"  # data flows again after a stale spell


@message
class FeedStatus:
    """What the feed says about itself: which source it reads and whether it is stale."""

    state: FeedState
    source: str  # "ws" or "rest"
    reason: str
    failures: int = 0  # consecutive failed reads when it was sent


class InstrumentKind(StrEnum):
    SPOT = "spot"
    SWAP = "swap"  # a linear (USDT-margined) perpetual: ccxt's ``BTC/USDT:USDT``


class MarginMode(StrEnum):
    ISOLATED = "isolated"
    CROSS = "cross"


@message
class MarginBracket:
    """One row of a venue's leverage brackets (Binance ``leverageBracket``, ccxt
    ``fetch_leverage_tiers``): positions of notional up to ``notional_cap`` may use at most
    ``max_leverage`` and keep ``maint_rate * notional - maint_amount`` as maintenance
    margin."""

    notional_cap: Decimal
    max_leverage: Decimal
    maint_rate: Decimal
    maint_amount: Decimal = ZERO


@message
class MarketSpec:
    """What the venue allows for one symbol: precision, minimums and fees; for a perpetual,
    its contract size and margin brackets."""

    symbol: str
    base: str
    quote: str
    amount_step: Decimal = Decimal("0.00000001")
    price_tick: Decimal = Decimal("0.00000001")
    min_qty: Decimal = ZERO
    min_notional: Decimal = ZERO
    maker_fee: Decimal = Decimal("0.001")
    taker_fee: Decimal = Decimal("0.001")
    kind: InstrumentKind = InstrumentKind.SPOT
    contract_size: Decimal = Decimal(1)
    brackets: tuple[MarginBracket, ...] = ()
    settle: str = ""  # the margin currency of a perpetual (USDT); empty for spot

    @property
    def margined(self) -> bool:
        """Traded on margin: both sides may be opened and P&L settles in cash."""
        return self.kind is InstrumentKind.SWAP

    def floor_qty(self, qty: Decimal) -> Decimal:
        """Round a quantity down to the venue's step (never up: never buy more than paid for)."""
        step = self.amount_step
        return (qty // step) * step if step > 0 else qty

    def round_price(self, price: Decimal) -> Decimal:
        tick = self.price_tick
        return (price / tick).to_integral_value() * tick if tick > 0 else price

    def minimum_problem(self, qty: Decimal, price: Decimal) -> str | None:
        """Why the venue would refuse this size, or None."""
        if qty <= 0:
            return "quantity rounds to zero at the market's precision"
        if qty < self.min_qty:
            return f"quantity {qty} below the market minimum {self.min_qty}"
        if qty * price < self.min_notional:
            return f"notional {qty * price:.8f} below the market minimum {self.min_notional}"
        return None


@message
class CandleSeries:
    """A whole candle file, read and validated (``bot/feeds/files.py`` loads it)."""

    path: Path
    symbol: str
    timeframe: str
    candles: list[Candle]
    gaps: list[Gap]
    dropped_partial: bool
    funding: tuple[FundingRate, ...] = ()  # a perpetual's funding rates, ascending
