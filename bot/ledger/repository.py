"""The ledger repository: every unit of work (orders, fills, positions, cash, signals, equity,
cursors and their audit events) commits in one PostgreSQL transaction, or not at all.

Append-only rows go through COPY on the same connection and transaction; mutable rows are
upserted. Any database failure surfaces as ``LedgerError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.domain import (
    AccountState,
    ActiveModel,
    AuditEvent,
    Channel,
    ControlRequest,
    Order,
    OrderStatus,
    OrderType,
    Position,
    RiskState,
    Side,
    UnitOfWork,
    command_from,
)
from bot.errors import LedgerError
from bot.ledger import tables as t
from bot.ledger.rows import (
    EQUITY_COLUMNS,
    FILL_COLUMNS,
    FLOW_COLUMNS,
    ORDER_COLUMNS,
    SIGNAL_COLUMNS,
    audit_batch,
    equity_copy,
    fill_rows,
    flow_rows,
    order_columns,
    signal_rows,
    to_dt,
    to_ms,
)
from bot.ledger.urls import async_url

_WORKING = [s.value for s in OrderStatus if not s.is_terminal]
_TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in OrderStatus if s.is_terminal)
_ORDER_MUTABLE = ("status", "status_reason", "filled_qty", "avg_fill_price", "fees",
                  "exchange_order_id", "updated_at")


def make_engine(url: str, pool_size: int = 5) -> AsyncEngine:
    return create_async_engine(async_url(url), pool_size=pool_size, pool_pre_ping=True)


_ORDER_TYPES = ("varchar", "text", "varchar", "text", "varchar", "varchar", "numeric", "numeric",
                "numeric", "varchar", "text", "numeric", "numeric", "numeric", "text", "bool",
                "timestamptz", "text", "text", "timestamptz", "timestamptz")
# one statement for every order of a unit, each column one array parameter: a backtest upserts
# thousands, and a statement per order (``executemany``) cost the writer 0.74 s in case b
ORDER_UPSERT = (
    f"INSERT INTO orders ({', '.join(ORDER_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{t}[]" for i, t in enumerate(_ORDER_TYPES, 1)) + ") "
    "ON CONFLICT (client_order_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _ORDER_MUTABLE)
    # a finished order is history: nothing may rewrite it
    + f" WHERE orders.status NOT IN ({_TERMINAL_SQL})")


# audit rows per ``audit_append`` call: a call's batch is one message, held whole in memory on
# both sides; the calls of one transaction continue one chain
AUDIT_CALL_ROWS = 4096
AUDIT_APPEND = "SELECT audit_append($1::text)"


def order_from_row(r: Any) -> Order:
    return Order(
        client_order_id=r.client_order_id, account=r.account, run_id=r.run_id, symbol=r.symbol,
        side=Side(r.side), order_type=OrderType(r.order_type), quantity=r.quantity,
        status=OrderStatus(r.status), created_ts=to_ms(r.created_at),
        updated_ts=to_ms(r.updated_at), signal_ts=to_ms(r.signal_ts),
        model_version=r.model_version, reason=r.reason, limit_price=r.limit_price,
        stop_price=r.stop_price, filled_qty=r.filled_qty, avg_fill_price=r.avg_fill_price,
        fees=r.fees, exchange_order_id=r.exchange_order_id, reduce_only=r.reduce_only,
        status_reason=r.status_reason,
    )


def brief(exc: BaseException) -> str:
    """A one-line cause: the driver's message, never the statement or its parameters."""
    # not adapter probing: SQLAlchemy's DBAPIError wraps the driver's error in ``orig``
    orig = getattr(exc, "orig", None)
    msg = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig or exc).__name__}: {msg[0][:300] if msg else ''}"


def control_from_row(r: Any) -> ControlRequest:
    return ControlRequest(command_from(r.action, r.reason, r.level), operator=r.operator,
                          channel=Channel(r.channel), request_id=r.id)


class PostgresLedger:
    """Each ``commit`` is one transaction, durable when it returns."""

    def __init__(self, engine: AsyncEngine, synchronous_commit: bool = True) -> None:
        self.engine = engine
        self._sync = "on" if synchronous_commit else "off"

    @classmethod
    def from_url(cls, url: str, synchronous_commit: bool = True) -> PostgresLedger:
        return cls(make_engine(url), synchronous_commit)

    async def start_run(
        self, run_id: str, account: str, mode: str, exchange: str, symbols: Sequence[str],
        timeframe: str, strategy: str, config: Mapping[str, object], starting_cash: Decimal,
        quote: str = "USDT", now_ms: int | None = None,
    ) -> None:
        now = to_dt(now_ms) if now_ms is not None else datetime.now(UTC)
        try:
            async with self.engine.begin() as conn:
                await conn.execute(pg_insert(t.Run).values(
                    id=run_id, account=account, mode=mode, exchange=exchange,
                    symbols=list(symbols), timeframe=timeframe, strategy=strategy,
                    status="running", config=dict(config)))
                await conn.execute(pg_insert(t.Account).values(
                    account=account, mode=mode, exchange=exchange, quote=quote,
                    starting_cash=starting_cash, cash=starting_cash, updated_at=now,
                ).on_conflict_do_nothing(index_elements=["account"]))
                await self._audit(conn, audit_batch([AuditEvent(
                    "run.started", "run", run_id, account, run_id, to_ms(now),
                    {"mode": mode, "exchange": exchange, "symbols": list(symbols),
                     "timeframe": timeframe, "strategy": strategy})]))
        except (SQLAlchemyError, OSError) as exc:
            raise LedgerError(f"cannot start run {run_id}: {brief(exc)}") from exc

    async def load_account(self, account: str) -> AccountState:
        try:
            async with self.engine.connect() as conn:
                cash = (await conn.execute(
                    select(t.Account.cash).where(t.Account.account == account))).scalar()
                pos_rows = (await conn.execute(
                    select(t.PositionRow).where(t.PositionRow.account == account))).all()
                order_rows = (await conn.execute(
                    select(t.OrderRow).where(t.OrderRow.account == account,
                                             t.OrderRow.status.in_(_WORKING))
                    .order_by(t.OrderRow.created_at, t.OrderRow.client_order_id))).all()
                cursor_rows = (await conn.execute(
                    select(t.Cursor).where(t.Cursor.account == account))).all()
                risk_row = (await conn.execute(
                    select(t.RiskStateRow.detail, t.RiskStateRow.breakers)
                    .where(t.RiskStateRow.account == account))).first()
                pending = (await conn.execute(
                    select(t.ControlRequestRow).where(t.ControlRequestRow.account == account,
                                                      t.ControlRequestRow.processed_at.is_(None))
                    .order_by(t.ControlRequestRow.id))).all()
                funded = (await conn.execute(
                    select(func.coalesce(
                        select(func.max(t.CashFlowRow.ts))
                        .where(t.CashFlowRow.account == account).scalar_subquery(),
                        select(func.min(t.AuditEventRow.ts))
                        .where(t.AuditEventRow.account == account,
                               t.AuditEventRow.kind.like("reconcile.%"))
                        .scalar_subquery())))).scalar()
                commands = (await conn.execute(
                    select(t.CommandRow.id, t.CommandRow.nonce, t.CommandRow.verdict,
                           t.CommandRow.ack).where(t.CommandRow.account == account))).all()
        except (SQLAlchemyError, OSError) as exc:
            raise LedgerError(f"cannot load account {account}: {brief(exc)}") from exc
        positions = tuple(
            Position(account, r.symbol, r.quantity, r.avg_price, r.realized_pnl,
                     to_ms(r.updated_at), r.liquidation_price)
            for r in pos_rows
        )
        return AccountState(
            cash=cash, positions=positions,
            working_orders=tuple(order_from_row(r) for r in order_rows),
            cursors={r.symbol: to_ms(r.last_ts) for r in cursor_rows},
            risk_state=(RiskState.restore(risk_row.detail)
                        if risk_row is not None and risk_row.detail else None),
            risk_memory=(risk_row.breakers or None) if risk_row is not None else None,
            pending_controls=tuple(control_from_row(r) for r in pending),
            recent_nonces=frozenset(c.nonce for c in commands),
            command_acks={c.id: c.ack for c in commands if c.verdict == "accepted"},
            funding_since=to_ms(funded) if funded is not None else 0,
        )

    async def pending_controls(self, account: str) -> list[ControlRequest]:
        try:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(
                    select(t.ControlRequestRow).where(t.ControlRequestRow.account == account,
                                                      t.ControlRequestRow.processed_at.is_(None))
                    .order_by(t.ControlRequestRow.id))).all()
        except (SQLAlchemyError, OSError) as exc:
            raise LedgerError(f"cannot read control requests: {brief(exc)}") from exc
        return [control_from_row(r) for r in rows]

    async def kill_pending(self, account: str) -> bool:
        try:
            async with self.engine.connect() as conn:
                found = (await conn.execute(
                    select(t.ControlRequestRow.id).where(
                        t.ControlRequestRow.account == account,
                        t.ControlRequestRow.action == "kill",
                        t.ControlRequestRow.processed_at.is_(None)).limit(1))).first()
        except (TimeoutError, SQLAlchemyError, OSError) as exc:
            raise LedgerError(f"cannot read control requests: {brief(exc)}") from exc
        return found is not None

    async def commit(self, unit: UnitOfWork) -> None:
        if not unit:
            return
        try:
            async with self.engine.begin() as conn:
                await conn.exec_driver_sql(f"SET LOCAL synchronous_commit TO {self._sync}")
                await self._write(conn, unit)
        except (TimeoutError, SQLAlchemyError, OSError) as exc:
            raise LedgerError(f"ledger write failed, nothing of it was kept: {brief(exc)}") from exc
        except Exception as exc:  # asyncpg errors raised inside COPY are not wrapped
            if type(exc).__module__.startswith("asyncpg"):
                raise LedgerError(
                    f"ledger write failed, nothing of it was kept: {brief(exc)}") from exc
            raise

    async def flush(self) -> None:
        return None

    async def _write(self, conn: AsyncConnection, unit: UnitOfWork) -> None:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        if unit.orders:
            await raw.execute(ORDER_UPSERT, *order_columns(unit.orders.values()))
        if unit.fills:
            await raw.copy_records_to_table("fills", columns=FILL_COLUMNS,
                                            records=fill_rows(unit.fills))
        if unit.positions:
            stmt = pg_insert(t.PositionRow)
            stmt = stmt.on_conflict_do_update(
                index_elements=["account", "symbol"],
                set_={c: stmt.excluded[c] for c in ("quantity", "avg_price", "realized_pnl",
                                                    "updated_at", "liquidation_price")},
            )
            await conn.execute(stmt, [
                {"account": p.account, "symbol": p.symbol, "quantity": p.quantity,
                 "avg_price": p.avg_price, "realized_pnl": p.realized_pnl,
                 "updated_at": to_dt(p.updated_ts), "liquidation_price": p.liquidation_price}
                for p in unit.positions.values()])
        if unit.cash_flows:
            await raw.copy_records_to_table("cash_flows", columns=FLOW_COLUMNS,
                                            records=flow_rows(unit.cash_flows))
        for account, (cash, ts) in unit.cash.items():
            await conn.execute(update(t.Account).where(t.Account.account == account)
                               .values(cash=cash, updated_at=to_dt(ts)))
        if unit.cursors:
            stmt = pg_insert(t.Cursor)
            stmt = stmt.on_conflict_do_update(index_elements=["account", "symbol"],
                                              set_={"last_ts": stmt.excluded.last_ts})
            await conn.execute(stmt, [{"account": a, "symbol": s, "last_ts": to_dt(ts)}
                                      for (a, s), ts in unit.cursors.items()])
        for account, (state, ts) in unit.risk_state.items():
            detail = state.snapshot()
            stmt = pg_insert(t.RiskStateRow).values(account=account, state=detail["state"],
                                                     reason=detail["reason"], detail=detail,
                                                     updated_at=to_dt(ts))
            await conn.execute(stmt.on_conflict_do_update(
                index_elements=["account"], set_={"state": stmt.excluded.state,
                                                  "reason": stmt.excluded.reason,
                                                  "detail": stmt.excluded.detail,
                                                  "updated_at": stmt.excluded.updated_at}))
        for account, memory_of in unit.risk_memory.items():
            memory = memory_of()
            snap = memory["machine"]
            stmt = pg_insert(t.RiskStateRow).values(account=account, state=snap["state"],
                                                     reason=snap["reason"], detail=snap,
                                                     breakers=memory, updated_at=datetime.now(UTC))
            await conn.execute(stmt.on_conflict_do_update(  # the state columns stay as written
                index_elements=["account"], set_={"breakers": stmt.excluded.breakers}))
        for req_id, result in unit.controls_done.items():
            await conn.execute(update(t.ControlRequestRow).where(t.ControlRequestRow.id == req_id)
                               .values(processed_at=datetime.now(UTC), result=result.as_dict()))
        if unit.commands:
            await conn.execute(pg_insert(t.CommandRow).on_conflict_do_nothing(),
                               [{"id": r.id, "account": r.account, "nonce": r.nonce,
                                 "action": r.action, "verdict": r.verdict, "ack": dict(r.ack),
                                 "received_at": to_dt(r.received_at)}
                                for r in unit.commands.values()])
        if unit.signals:
            await raw.copy_records_to_table("signals", columns=SIGNAL_COLUMNS,
                                            records=signal_rows(unit.signals))
        if unit.equity:
            await raw.copy_to_table("equity_snapshots", columns=EQUITY_COLUMNS, format="text",
                                    source=equity_copy(unit.equity))
        if unit.audit:
            for start in range(0, len(unit.audit), AUDIT_CALL_ROWS):
                await self._audit(conn, audit_batch(unit.audit[start:start + AUDIT_CALL_ROWS]))

    async def _audit(self, conn: AsyncConnection, batch: str) -> None:
        """Chain audit rows (``audit_batch``) in one call
        (``migrations/versions/0013_audit_append_batch.py``)."""
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        await raw.execute(AUDIT_APPEND, batch)

    async def finish_run(self, run_id: str, status: str, summary: Mapping[str, object]) -> None:
        try:
            async with self.engine.begin() as conn:
                row = (await conn.execute(
                    update(t.Run).where(t.Run.id == run_id)
                    .values(status=status, ended_at=datetime.now(UTC), summary=dict(summary))
                    .returning(t.Run.account))).first()
                if row is not None:
                    await self._audit(conn, audit_batch([AuditEvent(
                        "run.finished", "run", run_id, row.account, run_id,
                        to_ms(datetime.now(UTC)), {"status": status})]))
        except (SQLAlchemyError, OSError) as exc:
            raise LedgerError(f"cannot finish run {run_id}: {brief(exc)}") from exc

    async def active_ensemble(self) -> ActiveModel | None:
        from bot.ledger.model_versions import active_ensemble

        try:
            return await active_ensemble(self.engine)
        except (SQLAlchemyError, OSError) as exc:
            raise LedgerError(f"cannot read the model registry: {brief(exc)}") from exc

    async def chain_head(self) -> tuple[int, str] | None:
        try:
            async with self.engine.connect() as conn:
                row = (await conn.execute(text(
                    "SELECT seq, hash FROM audit_chain_head WHERE id = 1"))).first()
        except (SQLAlchemyError, OSError) as exc:
            raise LedgerError(f"cannot read the audit chain head: {brief(exc)}") from exc
        return (int(row.seq), str(row.hash)) if row is not None and row.seq else None

    async def close(self) -> None:
        await self.engine.dispose()
