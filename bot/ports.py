"""The seams of the engine. Every I/O stage sits behind one of these Protocols; the engine
imports nothing else from the adapters. Backtest, paper and live differ only in what is
plugged in here (see ``bot/app.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Protocol

from bot.domain import (
    AccountState,
    ActiveModel,
    BreakerReading,
    Candle,
    CashFlow,
    ControlRequest,
    FeedStatus,
    FundingRate,
    Gap,
    MarketSpec,
    Order,
    OrderIntent,
    OrderUpdate,
    Position,
    PromotedModel,
    Signal,
    UnitOfWork,
    VenueState,
    Warmup,
)

FeedEvent = tuple[Candle, ...] | Gap | Warmup | FeedStatus | FundingRate


class Feed(Protocol):
    """Closed candles, each once, in order; batches share one open time."""

    def resume_after(self, last_ts: dict[str, int]) -> None: ...

    def stream(self) -> AsyncIterator[FeedEvent]: ...

    async def close(self) -> None: ...


class PortfolioView(Protocol):
    """What strategies and risk may read of the account (never write)."""

    @property
    def cash(self) -> Decimal: ...

    def equity(self) -> Decimal: ...

    def position(self, symbol: str) -> Position: ...

    def working_orders(self, symbol: str | None = None) -> Sequence[Order]: ...

    def price(self, symbol: str) -> Decimal | None: ...

    def mark_price(self, symbol: str) -> Decimal | None:
        """The mark price of a perpetual where known, else the last traded price."""
        ...

    def positions(self) -> Sequence[Position]: ...


class SignalSource(Protocol):
    """Turns closed candles into beliefs: the EMA baseline or the model ensemble."""

    name: str
    model_version: str

    @property
    def device(self) -> str:
        """Where it computes ("cpu", "cuda:0"): the label of its inference latency."""
        ...

    async def on_candles(self, candles: Sequence[Candle]) -> list[Signal]: ...

    def on_gap(self, gap: Gap) -> None: ...

    def warm(self, candles: Sequence[Candle]) -> None:
        """History before trading starts: build state, emit nothing."""
        ...

    def swap(self, model: PromotedModel) -> bool:
        """Score with a newly promoted version from the next candle on; False where the
        source has no model to swap (the EMA baseline, a replayed evaluation)."""
        ...


class Strategy(Protocol):
    def decide(self, signal: Signal, portfolio: PortfolioView) -> OrderIntent | None: ...


class Broker(Protocol):
    """Where orders go: the paper fill model or a real exchange through ccxt."""

    async def markets(self, symbols: Sequence[str]) -> Mapping[str, MarketSpec]: ...

    def restore(
        self, orders: Sequence[Order], positions: Sequence[Position], cash: Decimal,
        funding_since: int = 0,
    ) -> None:
        """Take over working orders and balances known to the ledger (restart);
        ``funding_since``: the newest funding payment the ledger holds (or, none yet, when the
        account began; 0 for a new account), after which a venue's funding history is new."""
        ...

    async def submit(self, order: Order) -> OrderUpdate: ...

    async def cancel(self, order: Order) -> OrderUpdate: ...

    async def on_candle(self, candle: Candle) -> list[OrderUpdate]:
        """Give the venue a closed candle: paper fills resting orders, live polls fills."""
        ...

    async def on_funding(self, funding: FundingRate) -> list[CashFlow]:
        """A perpetual's funding time passed: the cash flows the simulated venue books (paper,
        backtest). A real venue books its own, read from its funding history: none here."""
        ...

    has_venue: bool
    """True where the broker's books answer to a venue that can disagree with them (live):
    the engine reconciles against ``venue_state``. False for the paper broker."""

    async def venue_state(
        self, symbols: Sequence[str]
    ) -> tuple[VenueState, list[OrderUpdate]] | None:
        """The venue's balances and open orders for a reconciliation, with the order updates
        found on the way; None where there is no venue apart from our own books (paper)."""
        ...

    @property
    def in_doubt(self) -> int:
        """Orders whose outcome at the venue is not known yet (0 where none can be)."""
        ...

    async def close(self) -> None: ...


class Ledger(Protocol):
    async def start_run(
        self,
        run_id: str,
        account: str,
        mode: str,
        exchange: str,
        symbols: Sequence[str],
        timeframe: str,
        strategy: str,
        config: Mapping[str, object],
        starting_cash: Decimal,
        quote: str = "USDT",
    ) -> None: ...

    async def load_account(self, account: str) -> AccountState: ...

    async def pending_controls(self, account: str) -> list[ControlRequest]:
        """Operator requests made through the database and not carried out yet."""
        ...

    async def kill_pending(self, account: str) -> bool:
        """Is a kill recorded through the database (``stackbot kill``, the console) and not
        carried out yet? Asked just before an entry is sent: a kill that latched after the
        entry was decided, but before it left, stops it (``Engine.act``)."""
        ...

    async def active_ensemble(self) -> ActiveModel | None:
        """The registry's active ensemble (path, sha256, id), None when there is none."""
        ...

    async def commit(self, unit: UnitOfWork) -> None:
        """Durable when it returns, or raise ``LedgerError``; group-committing ledgers may
        defer durability to ``flush``."""
        ...

    async def flush(self) -> None: ...

    async def finish_run(self, run_id: str, status: str, summary: Mapping[str, object]) -> None: ...

    async def chain_head(self) -> tuple[int, str] | None:
        """The audit chain's last link (seq, hash), durable when it returns: what is anchored
        outside the database (``bot.ledger.audit``). None before the first audit event."""
        ...

    async def close(self) -> None: ...


class Observer(Protocol):
    """What a running engine reports for monitoring (``bot/bus/prometheus.py``); the engine
    calls it after the fact and never waits on it. ``NullObserver`` where nobody watches."""

    def on_step(self, decision_s: float, inference_s: float, lag_s: float,
                candles: int) -> None: ...

    def on_commit(self, unit: UnitOfWork, seconds: float) -> None: ...

    def on_venue_error(self, ccxt_class: str) -> None: ...

    def on_risk(self, state: str,
                readings: Callable[[], Sequence[BreakerReading]]) -> None: ...


class NullObserver:
    def on_step(self, decision_s: float, inference_s: float, lag_s: float,
                candles: int) -> None:
        return None

    def on_commit(self, unit: UnitOfWork, seconds: float) -> None:
        return None

    def on_venue_error(self, ccxt_class: str) -> None:
        return None

    def on_risk(self, state: str,
                readings: Callable[[], Sequence[BreakerReading]]) -> None:
        return None
