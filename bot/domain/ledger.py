"""What goes to the ledger together (a unit of work) and what comes back at start-up."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from bot.domain.control import CommandRecord, ControlRequest, ControlResult
from bot.domain.message import message
from bot.domain.risk import RiskState
from bot.domain.trading import (
    AuditEvent,
    CashFlow,
    EquitySnapshot,
    Fill,
    Order,
    Position,
    Signal,
)


@dataclass(slots=True)
class UnitOfWork:
    """Changes that commit together, each with its audit event, in one transaction."""

    signals: list[tuple[str, str, Signal]] = field(default_factory=list)  # run, account, signal
    orders: dict[str, Order] = field(default_factory=dict)  # latest state per client id
    fills: list[Fill] = field(default_factory=list)
    cash_flows: list[CashFlow] = field(default_factory=list)  # funding
    positions: dict[tuple[str, str], Position] = field(default_factory=dict)
    cash: dict[str, tuple[Decimal, int]] = field(default_factory=dict)  # account -> (cash, ts)
    equity: list[EquitySnapshot] = field(default_factory=list)
    cursors: dict[tuple[str, str], int] = field(default_factory=dict)  # (account, symbol) -> ts
    risk_state: dict[str, tuple[RiskState, int]] = field(default_factory=dict)  # latched, at ts
    # account -> the risk manager's memory, taken when the unit is written (group commits
    # write only the latest)
    risk_memory: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)
    controls_done: dict[int, ControlResult] = field(default_factory=dict)  # by request id
    commands: dict[str, CommandRecord] = field(default_factory=dict)  # by MQTT command id
    audit: list[AuditEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.signals or self.orders or self.fills or self.cash_flows or self.positions
            or self.cash
            or self.equity or self.cursors or self.risk_state or self.risk_memory
            or self.controls_done
            or self.commands or self.audit
        )

    def absorb(self, other: UnitOfWork) -> None:
        """Fold a later unit into this one (group commit keeps the last state per key)."""
        self.signals.extend(other.signals)
        self.orders.update(other.orders)
        self.fills.extend(other.fills)
        self.cash_flows.extend(other.cash_flows)
        self.positions.update(other.positions)
        self.cash.update(other.cash)
        self.equity.extend(other.equity)
        self.cursors.update(other.cursors)
        self.risk_state.update(other.risk_state)
        self.risk_memory.update(other.risk_memory)
        self.controls_done.update(other.controls_done)
        self.commands.update(other.commands)
        self.audit.extend(other.audit)


@message
class AccountState:
    """What the ledger knows of an account at start-up."""

    cash: Decimal | None
    positions: tuple[Position, ...]
    working_orders: tuple[Order, ...]
    cursors: Mapping[str, int]
    risk_state: RiskState | None = None
    risk_memory: Mapping[str, Any] | None = None  # breaker windows etc. (``RiskManager.memory``)
    pending_controls: tuple[ControlRequest, ...] = ()
    recent_nonces: frozenset[str] = frozenset()
    command_acks: Mapping[str, Any] = field(default_factory=dict)  # accepted MQTT id -> ack
    # the newest funding payment booked, else the account's first reconciliation with a venue
    # (ms; what it held then came with the balances it handed over); 0: neither
    funding_since: int = 0


@message
class ActiveModel:
    """The registry's active ensemble: its id, manifest path and the manifest's sha256 (the
    load refuses a file that no longer matches), and the metrics it was registered with."""

    id: str
    path: str
    sha256: str
    metrics: Mapping[str, Any]


@message
class ModelVersion:
    """One registered model version, as ``stackbot models list`` shows it."""

    id: str
    architecture: str  # "ensemble" or a member's name
    status: str  # "candidate" | "active" | "retired"
    symbols: tuple[str, ...]
    timeframe: str
    train_end: datetime | None
    metrics: Mapping[str, Any]
    created_at: datetime | None
