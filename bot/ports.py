"""The seams of the engine. Every I/O stage sits behind one of these Protocols; the engine
imports nothing else from the adapters. Backtest, paper and live differ only in what is
plugged in here (see ``bot/app.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from bot.domain import (
    AuditEvent,
    Candle,
    EquitySnapshot,
    FeedStatus,
    Fill,
    Gap,
    MarketSpec,
    OrderIntent,
    Order,
    Position,
    Signal,
    Warmup,
)

FeedEvent = tuple[Candle, ...] | Gap | Warmup | FeedStatus


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


class SignalSource(Protocol):
    """Turns closed candles into beliefs: the EMA baseline or the model ensemble.

    A source may also offer ``warm(candles)`` for history that must not produce signals."""

    name: str

    async def on_candles(self, candles: Sequence[Candle]) -> list[Signal]: ...

    def on_gap(self, gap: Gap) -> None: ...


class Strategy(Protocol):
    def decide(self, signal: Signal, portfolio: PortfolioView) -> OrderIntent | None: ...


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """What a venue said about one order: a new state and any fills."""

    order: Order
    fills: tuple[Fill, ...] = ()
    note: str = ""


@dataclass(frozen=True, slots=True)
class VenueState:
    """The venue's side of a reconciliation: total balances (free + locked) per asset, the
    open orders as (client id, symbol, exchange id), and last prices for adopting holdings."""

    balances: Mapping[str, Decimal]
    open_orders: tuple[tuple[str, str, str], ...]
    prices: Mapping[str, Decimal] = field(default_factory=dict)


class Broker(Protocol):
    """Where orders go: the paper fill model or a real exchange through ccxt."""

    async def markets(self, symbols: Sequence[str]) -> Mapping[str, MarketSpec]: ...

    def restore(self, orders: Sequence[Order], positions: Sequence[Position], cash: Decimal) -> None:
        """Take over working orders and balances known to the ledger (restart)."""
        ...

    async def submit(self, order: Order) -> OrderUpdate: ...

    async def cancel(self, order: Order) -> OrderUpdate: ...

    async def on_candle(self, candle: Candle) -> list[OrderUpdate]:
        """Give the venue a closed candle: paper fills resting orders, live polls fills."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class UnitOfWork:
    """Changes that commit together, each with its audit event, in one transaction."""

    signals: list[tuple[str, str, Signal]] = field(default_factory=list)  # run, account, signal
    orders: dict[str, Order] = field(default_factory=dict)  # latest state per client id
    fills: list[Fill] = field(default_factory=list)
    positions: dict[tuple[str, str], Position] = field(default_factory=dict)
    cash: dict[str, tuple[Decimal, int]] = field(default_factory=dict)  # account -> (cash, ts)
    equity: list[EquitySnapshot] = field(default_factory=list)
    cursors: dict[tuple[str, str], int] = field(default_factory=dict)  # (account, symbol) -> ts
    risk_state: dict[str, tuple[dict[str, Any], int]] = field(default_factory=dict)
    # account -> the risk manager's memory, taken when the unit is written (group commits
    # write only the latest)
    risk_memory: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)
    controls_done: dict[int, dict[str, Any]] = field(default_factory=dict)  # request id -> result
    commands: dict[str, dict[str, Any]] = field(default_factory=dict)  # MQTT command id -> row
    audit: list[AuditEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.signals or self.orders or self.fills or self.positions or self.cash
            or self.equity or self.cursors or self.risk_state or self.risk_memory
            or self.controls_done
            or self.commands or self.audit
        )

    def absorb(self, other: UnitOfWork) -> None:
        """Fold a later unit into this one (group commit keeps the last state per key)."""
        self.signals.extend(other.signals)
        self.orders.update(other.orders)
        self.fills.extend(other.fills)
        self.positions.update(other.positions)
        self.cash.update(other.cash)
        self.equity.extend(other.equity)
        self.cursors.update(other.cursors)
        self.risk_state.update(other.risk_state)
        self.risk_memory.update(other.risk_memory)
        self.controls_done.update(other.controls_done)
        self.commands.update(other.commands)
        self.audit.extend(other.audit)


@dataclass(frozen=True, slots=True)
class AccountState:
    """What the ledger knows of an account at start-up."""

    cash: Decimal | None
    positions: tuple[Position, ...]
    working_orders: tuple[Order, ...]
    cursors: Mapping[str, int]
    risk_state: Mapping[str, Any] | None = None
    risk_memory: Mapping[str, Any] | None = None  # breaker windows etc. (``RiskManager.memory``)
    pending_controls: tuple[ControlRequest, ...] = ()
    recent_nonces: frozenset[str] = frozenset()
    command_acks: Mapping[str, Any] = field(default_factory=dict)  # accepted MQTT id -> ack


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """An operator's command, from any channel: kill (pause|cancel|flatten) or resume."""

    action: str  # "kill" | "resume" | "status"
    reason: str
    operator: str
    channel: str  # "cli" | "mqtt" | "signal"
    level: str | None = None
    request_id: int | None = None  # control_requests row (CLI channel)
    command_id: str | None = None  # MQTT command id
    nonce: str | None = None  # MQTT command nonce
    payload: Any = None  # internal requests only (e.g. a newly promoted model)


class Ledger(Protocol):
    async def start_run(
        self, run_id: str, account: str, mode: str, exchange: str, symbols: Sequence[str],
        timeframe: str, strategy: str, config: Mapping[str, object], starting_cash: Decimal,
    ) -> None: ...

    async def load_account(self, account: str) -> AccountState: ...

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
