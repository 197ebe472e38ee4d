"""The ledger repository: every unit of work (orders, fills, positions, cash, signals, equity,
cursors and their audit events) commits in one PostgreSQL transaction, or not at all.

Append-only rows go through COPY on the same connection and transaction; mutable rows are
upserted. Any database failure surfaces as ``LedgerError``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from operator import attrgetter
from typing import Any

import orjson
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
    EquitySnapshot,
    Order,
    OrderStatus,
    OrderType,
    Position,
    Regime,
    RiskState,
    Side,
    UnitOfWork,
    command_from,
)
from bot.errors import LedgerError
from bot.ledger import tables as t
from bot.ledger.urls import async_url
from bot.logs import json_spelled_secrets, masked

_WORKING = [s.value for s in OrderStatus if not s.is_terminal]
_TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in OrderStatus if s.is_terminal)
_ORDER_MUTABLE = ("status", "status_reason", "filled_qty", "avg_fill_price", "fees",
                  "exchange_order_id", "updated_at")


@lru_cache(maxsize=8192)
def to_dt(ms: int) -> datetime:
    """Milliseconds -> aware datetime (cached: one candle's rows share their timestamps)."""
    return datetime.fromtimestamp(ms / 1000, UTC)


# signals.regime is an integer column: bear 0, neutral 1, bull 2, unknown NULL
REGIME_CODES = {Regime.BEAR: 0, Regime.NEUTRAL: 1, Regime.BULL: 2}
# the signal attributes stored as they are, read in one C call per row
SIGNAL_FIELDS = ("symbol", "p_up", "expected_return", "dispersion", "price", "source",
                 "model_version")
signal_fields = attrgetter(*SIGNAL_FIELDS)


@lru_cache(maxsize=4096)
def _day(days: int) -> str:
    return datetime.fromtimestamp(days * 86400, UTC).strftime("%Y-%m-%d")


_MINUTES = [f" {m // 60:02}:{m % 60:02}:00+00" for m in range(1440)]


def iso_ts(ms: int) -> str:
    """Milliseconds -> the timestamptz text PostgreSQL reads, UTC to the millisecond (a whole
    minute, as every candle's time is, from a table)."""
    days, rest = divmod(ms, 86_400_000)
    minute, milli = divmod(rest, 60_000)
    if not milli:
        return _day(days) + _MINUTES[minute]
    return f"{_day(days)} {minute // 60:02}:{minute % 60:02}:{milli / 1000:06.3f}+00"


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@lru_cache(maxsize=1024)
def copy_escaped(text: str) -> str:
    """A string as a field of COPY's text format."""
    return text.translate(_COPY_ESCAPES)


def equity_copy(rows: Sequence[EquitySnapshot]) -> io.BytesIO:
    """Equity snapshots in COPY's text format. A Decimal's ``str`` is exact (its exponent
    included, which ``numeric`` reads), and PostgreSQL parses the text on its own core; the
    binary format would have the writer thread encode every Decimal digit by digit while it
    holds the interpreter lock (0.34 s of a 45,000-candle backtest; this takes about 0.07)."""
    esc = copy_escaped
    return io.BytesIO("".join([
        f"{esc(e.account)}\t{esc(e.run_id)}\t{iso_ts(e.ts)}\t{e.cash!s}\t"
        f"{e.positions_value!s}\t{e.cash + e.positions_value!s}\n" for e in rows]).encode())


def members_json(members: tuple[tuple[str, float], ...]) -> str | None:
    """``signals.members``: the members' p by name, as JSON text (COPY takes jsonb as text)."""
    return orjson.dumps(dict(members)).decode() if members else None


def to_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def make_engine(url: str, pool_size: int = 5) -> AsyncEngine:
    return create_async_engine(async_url(url), pool_size=pool_size, pool_pre_ping=True)


_ORDER_COLUMNS = ("client_order_id", "account", "run_id", "symbol", "side", "order_type",
                  "quantity", "limit_price", "stop_price", "status", "status_reason",
                  "filled_qty", "avg_fill_price", "fees", "exchange_order_id", "reduce_only",
                  "signal_ts", "model_version", "reason", "created_at", "updated_at")
# the same, as the SQL array types of the unnest below
_ORDER_TYPES = ("varchar", "text", "varchar", "text", "varchar", "varchar", "numeric", "numeric",
                "numeric", "varchar", "text", "numeric", "numeric", "numeric", "text", "bool",
                "timestamptz", "text", "text", "timestamptz", "timestamptz")
# one statement for every order of a unit, each column one array parameter: a backtest upserts
# thousands, and a statement per order (``executemany``) cost the writer 0.74 s in case b
ORDER_UPSERT = (
    f"INSERT INTO orders ({', '.join(_ORDER_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{t}[]" for i, t in enumerate(_ORDER_TYPES, 1)) + ") "
    "ON CONFLICT (client_order_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _ORDER_MUTABLE)
    # a finished order is history: nothing may rewrite it
    + f" WHERE orders.status NOT IN ({_TERMINAL_SQL})")


AUDIT_APPEND = ("SELECT audit_append($1::text[], $2::text[], $3::timestamptz[], $4::text[], "
                "$5::text[], $6::text[], $7::jsonb[])")


def _order_record(o: Order) -> tuple[object, ...]:
    """An order as a row of ``ORDER_UPSERT``'s columns, in ``_ORDER_COLUMNS`` order."""
    return (o.client_order_id, o.account, o.run_id, o.symbol, o.side.value,
            o.order_type.value, o.quantity, o.limit_price, o.stop_price, o.status.value,
            masked(o.status_reason), o.filled_qty, o.avg_fill_price, o.fees,
            o.exchange_order_id, o.reduce_only, to_dt(o.signal_ts), o.model_version, o.reason,
            to_dt(o.created_ts), to_dt(o.updated_ts))


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


def json_text(payload: Mapping[str, Any]) -> str:
    """A payload as stored: sorted keys, and no registered secret (``bot.logs.masked``).

    Serialised first, then searched for each secret as JSON would spell it; only a payload
    that holds one is walked and masked (the walk cost a backtest 0.4 s for 41k events)."""
    text_ = orjson.dumps(payload, default=str, option=orjson.OPT_SORT_KEYS).decode()
    if any(spelled in text_ for spelled in json_spelled_secrets()):
        return orjson.dumps(masked(payload), default=str, option=orjson.OPT_SORT_KEYS).decode()
    return text_


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
                await self._audit(conn, [AuditEvent(
                    "run.started", "run", run_id, account, run_id, to_ms(now),
                    {"mode": mode, "exchange": exchange, "symbols": list(symbols),
                     "timeframe": timeframe, "strategy": strategy})])
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
            # unit.orders holds one state per client id: no row is upserted twice
            await raw.execute(ORDER_UPSERT, *zip(*map(_order_record, unit.orders.values()),
                                                 strict=True))
        if unit.fills:
            await raw.copy_records_to_table("fills", columns=[
                "fill_id", "client_order_id", "account", "symbol", "side", "quantity", "price",
                "fee", "fee_currency", "liquidity", "ts"], records=[
                (f.fill_id, f.client_order_id, f.account, f.symbol, f.side.value, f.quantity,
                 f.price, f.fee, f.fee_currency, f.liquidity, to_dt(f.ts)) for f in unit.fills])
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
            await raw.copy_records_to_table("cash_flows", columns=[
                "flow_id", "account", "symbol", "kind", "amount", "rate", "mark", "notional",
                "ts"], records=[
                (f.flow_id, f.account, f.symbol, f.kind, f.amount, f.rate, f.mark, f.notional,
                 to_dt(f.ts)) for f in unit.cash_flows])
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
            regime = REGIME_CODES.get
            await raw.copy_records_to_table("signals", columns=[
                *SIGNAL_FIELDS, "run_id", "account", "ts", "regime", "members"], records=[
                signal_fields(s) + (run_id, account, to_dt(s.ts), regime(s.regime),
                                    members_json(s.members) if s.members else None)
                for run_id, account, s in unit.signals])
        if unit.equity:
            await raw.copy_to_table("equity_snapshots", columns=[
                "account", "run_id", "ts", "cash", "positions_value", "equity"],
                format="text", source=equity_copy(unit.equity))
        if unit.audit:
            await self._audit(conn, unit.audit)

    async def _audit(self, conn: AsyncConnection, events: Sequence[AuditEvent]) -> None:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        # chained in one call over the batch, a column an array
        # (migrations/versions/0013_audit_append_arrays.py)
        await raw.execute(AUDIT_APPEND, *zip(*[
            (e.account, e.run_id, to_dt(e.ts), e.kind, e.entity, e.entity_id, json_text(e.payload))
            for e in events], strict=True))

    async def finish_run(self, run_id: str, status: str, summary: Mapping[str, object]) -> None:
        try:
            async with self.engine.begin() as conn:
                row = (await conn.execute(
                    update(t.Run).where(t.Run.id == run_id)
                    .values(status=status, ended_at=datetime.now(UTC), summary=dict(summary))
                    .returning(t.Run.account))).first()
                if row is not None:
                    await self._audit(conn, [AuditEvent(
                        "run.finished", "run", run_id, row.account, run_id,
                        to_ms(datetime.now(UTC)), {"status": status})])
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
