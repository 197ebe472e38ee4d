"""Ledger schema (SQLAlchemy 2). Money and quantities are NUMERIC; times are timestamptz.

The Alembic migrations in ``migrations/versions`` create exactly this schema; a test compares
the two so they cannot drift.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TS = DateTime(timezone=True)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account: Mapped[str] = mapped_column(Text, index=True)
    mode: Mapped[str] = mapped_column(String(16))
    exchange: Mapped[str] = mapped_column(Text)
    symbols: Mapped[list[str]] = mapped_column(ARRAY(Text))
    timeframe: Mapped[str] = mapped_column(String(8))
    strategy: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    ended_at: Mapped[datetime | None] = mapped_column(TS)
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class Account(Base):
    __tablename__ = "accounts"
    account: Mapped[str] = mapped_column(Text, primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))
    exchange: Mapped[str] = mapped_column(Text)
    quote: Mapped[str] = mapped_column(String(16))
    starting_cash: Mapped[Decimal] = mapped_column(Numeric)
    cash: Mapped[Decimal] = mapped_column(Numeric)
    updated_at: Mapped[datetime] = mapped_column(TS)


class SignalRow(Base):
    __tablename__ = "signals"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # refers to runs.id, checked once per statement (migration 0011), not by a foreign key
    run_id: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column(TS)
    p_up: Mapped[float] = mapped_column(Float)
    expected_return: Mapped[float] = mapped_column(Float)
    dispersion: Mapped[float] = mapped_column(Float)
    regime: Mapped[int | None] = mapped_column(Integer)
    price: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(Text)
    model_version: Mapped[str] = mapped_column(Text)
    # each member's calibrated p, by name (migration 0008); NULL for sources without members
    members: Mapped[dict[str, float] | None] = mapped_column(JSONB)
    __table_args__ = (Index("ix_signals_account_symbol_ts", "account", "symbol", "ts"),)


class OrderRow(Base):
    __tablename__ = "orders"
    client_order_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str] = mapped_column(String(32), ForeignKey("runs.id"))
    symbol: Mapped[str] = mapped_column(Text)
    side: Mapped[str] = mapped_column(String(4))
    order_type: Mapped[str] = mapped_column(String(8))
    quantity: Mapped[Decimal] = mapped_column(Numeric)
    limit_price: Mapped[Decimal | None] = mapped_column(Numeric)
    stop_price: Mapped[Decimal | None] = mapped_column(Numeric)
    status: Mapped[str] = mapped_column(String(20))
    status_reason: Mapped[str] = mapped_column(Text)
    filled_qty: Mapped[Decimal] = mapped_column(Numeric)
    avg_fill_price: Mapped[Decimal] = mapped_column(Numeric)
    fees: Mapped[Decimal] = mapped_column(Numeric)
    exchange_order_id: Mapped[str | None] = mapped_column(Text)
    reduce_only: Mapped[bool] = mapped_column(Boolean)
    signal_ts: Mapped[datetime] = mapped_column(TS)
    model_version: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS)
    updated_at: Mapped[datetime] = mapped_column(TS)
    __table_args__ = (Index("ix_orders_account_status", "account", "status"),)


class FillRow(Base):
    __tablename__ = "fills"
    fill_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_order_id: Mapped[str] = mapped_column(ForeignKey("orders.client_order_id"))
    account: Mapped[str] = mapped_column(Text, index=True)
    symbol: Mapped[str] = mapped_column(Text)
    side: Mapped[str] = mapped_column(String(4))
    quantity: Mapped[Decimal] = mapped_column(Numeric)
    price: Mapped[Decimal] = mapped_column(Numeric)
    fee: Mapped[Decimal] = mapped_column(Numeric)
    fee_currency: Mapped[str] = mapped_column(String(16))
    liquidity: Mapped[str] = mapped_column(String(8))
    ts: Mapped[datetime] = mapped_column(TS)


class PositionRow(Base):
    __tablename__ = "positions"
    account: Mapped[str] = mapped_column(Text, primary_key=True)
    symbol: Mapped[str] = mapped_column(Text, primary_key=True)
    quantity: Mapped[Decimal] = mapped_column(Numeric)
    avg_price: Mapped[Decimal] = mapped_column(Numeric)
    realized_pnl: Mapped[Decimal] = mapped_column(Numeric)
    updated_at: Mapped[datetime] = mapped_column(TS)
    liquidation_price: Mapped[Decimal | None] = mapped_column(Numeric)


class CashFlowRow(Base):
    """Funding: cash that moves without a trade (migration 0009)."""

    __tablename__ = "cash_flows"
    flow_id: Mapped[str] = mapped_column(Text, primary_key=True)
    account: Mapped[str] = mapped_column(Text, primary_key=True)
    symbol: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    amount: Mapped[Decimal] = mapped_column(Numeric)
    rate: Mapped[Decimal] = mapped_column(Numeric)
    mark: Mapped[Decimal] = mapped_column(Numeric)
    notional: Mapped[Decimal] = mapped_column(Numeric)
    ts: Mapped[datetime] = mapped_column(TS)
    __table_args__ = (Index("ix_cash_flows_account_ts", "account", "ts"),)


class EquitySnapshotRow(Base):
    __tablename__ = "equity_snapshots"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(Text)
    # refers to runs.id, checked once per statement (migration 0011), not by a foreign key
    run_id: Mapped[str] = mapped_column(String(32))
    ts: Mapped[datetime] = mapped_column(TS)
    cash: Mapped[Decimal] = mapped_column(Numeric)
    positions_value: Mapped[Decimal] = mapped_column(Numeric)
    equity: Mapped[Decimal] = mapped_column(Numeric)
    __table_args__ = (Index("ix_equity_account_ts", "account", "ts"),)


class Cursor(Base):
    """The last candle the engine fully processed, per account and symbol (restart point)."""

    __tablename__ = "cursors"
    account: Mapped[str] = mapped_column(Text, primary_key=True)
    symbol: Mapped[str] = mapped_column(Text, primary_key=True)
    last_ts: Mapped[datetime] = mapped_column(TS)


class AuditEventRow(Base):
    """Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str] = mapped_column(String(32))
    ts: Mapped[datetime] = mapped_column(TS)
    recorded_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    kind: Mapped[str] = mapped_column(Text)
    entity: Mapped[str] = mapped_column(Text)
    entity_id: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # set by the database's chain (migrations 0004, 0010), never by the application
    seq: Mapped[int] = mapped_column(BigInteger)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    __table_args__ = (
        Index("ux_audit_events_seq", "seq", unique=True),
        Index("ix_audit_account_id", "account", "id"),
        Index("ix_audit_entity", "entity", "entity_id"),
    )


class RiskStateRow(Base):
    """The trading state per account; HALTED latches across restarts through this row."""

    __tablename__ = "risk_states"
    account: Mapped[str] = mapped_column(Text, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(TS)
    # the risk manager's memory (breaker windows, levels, throttle): migration 0006
    breakers: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class ControlRequestRow(Base):
    """Operator commands from the CLI (and any channel that goes through the database)."""

    __tablename__ = "control_requests"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(16))
    level: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    operator: Mapped[str] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    processed_at: Mapped[datetime | None] = mapped_column(TS)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    __table_args__ = (Index("ix_control_pending", "account", "processed_at"),)


class CommandRow(Base):
    """Signed MQTT commands seen, accepted or not: idempotency by id, replay by nonce."""

    __tablename__ = "commands"
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    account: Mapped[str] = mapped_column(Text)
    nonce: Mapped[str] = mapped_column(Text, unique=True)
    action: Mapped[str] = mapped_column(Text)
    verdict: Mapped[str] = mapped_column(String(16))
    ack: Mapped[dict[str, Any]] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(TS)


class ModelVersionRow(Base):
    """The model registry: one row per trained member, plus one for the ensemble bundle."""

    __tablename__ = "model_versions"
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    ensemble_id: Mapped[str] = mapped_column(Text)
    architecture: Mapped[str] = mapped_column(Text)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONB)
    feature_spec_hash: Mapped[str] = mapped_column(String(32))
    symbols: Mapped[list[str]] = mapped_column(ARRAY(Text))
    timeframe: Mapped[str] = mapped_column(String(8))
    train_start: Mapped[datetime] = mapped_column(TS)
    train_end: Mapped[datetime] = mapped_column(TS)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONB)
    checkpoint_path: Mapped[str] = mapped_column(Text)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    promoted_at: Mapped[datetime | None] = mapped_column(TS)
    __table_args__ = (
        CheckConstraint("status IN ('candidate', 'active', 'retired')",
                        name="ck_model_versions_status"),
        Index("ix_model_versions_ensemble", "ensemble_id"),
    )


class AuditChainHead(Base):
    """The last link of the audit chain (one row, moved only by the chain trigger)."""

    __tablename__ = "audit_chain_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    __table_args__ = (CheckConstraint("id = 1", name="ck_audit_chain_head_single_row"),)
