"""A unit of work's rows as the driver sends them: pure, no I/O.

Every bulk row of a unit (orders, fills, funding, signals, equity snapshots, audit events),
built here, apart from the I/O; ``PostgresLedger`` builds each list just before the statement
that sends it, so that one list at a time is held. The encodings: COPY's text format for
equity snapshots, one array per column for orders, one JSON text for a batch of audit events,
binary COPY records for the rest.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from operator import attrgetter
from typing import Any

import orjson

from bot.domain import AuditEvent, CashFlow, EquitySnapshot, Fill, Order, Regime, Signal
from bot.logs import json_spelled_secrets, masked


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


def json_text(payload: Mapping[str, Any]) -> str:
    """A payload as stored: sorted keys, and no registered secret (``bot.logs.masked``).

    Serialised first, then searched for each secret as JSON would spell it; only a payload
    that holds one is walked and masked (the walk cost a backtest 0.4 s for 41k events)."""
    text_ = orjson.dumps(payload, default=str, option=orjson.OPT_SORT_KEYS).decode()
    secrets = json_spelled_secrets()
    if secrets and any(spelled in text_ for spelled in secrets):
        return orjson.dumps(masked(payload), default=str, option=orjson.OPT_SORT_KEYS).decode()
    return text_


ORDER_COLUMNS = ("client_order_id", "account", "run_id", "symbol", "side", "order_type",
                  "quantity", "limit_price", "stop_price", "status", "status_reason",
                  "filled_qty", "avg_fill_price", "fees", "exchange_order_id", "reduce_only",
                  "signal_ts", "model_version", "reason", "created_at", "updated_at")
# the same, as the SQL array types of the unnest below


def order_record(o: Order) -> tuple[object, ...]:
    """An order as a row of the orders' upsert (``ORDER_UPSERT``), in ``ORDER_COLUMNS``
    order."""
    return (o.client_order_id, o.account, o.run_id, o.symbol, o.side.value,
            o.order_type.value, o.quantity, o.limit_price, o.stop_price, o.status.value,
            masked(o.status_reason), o.filled_qty, o.avg_fill_price, o.fees,
            o.exchange_order_id, o.reduce_only, to_dt(o.signal_ts), o.model_version, o.reason,
            to_dt(o.created_ts), to_dt(o.updated_ts))


Row = tuple[Any, ...]

FILL_COLUMNS = ["fill_id", "client_order_id", "account", "symbol", "side", "quantity", "price",
                "fee", "fee_currency", "liquidity", "ts"]
FLOW_COLUMNS = ["flow_id", "account", "symbol", "kind", "amount", "rate", "mark", "notional",
                "ts"]
SIGNAL_COLUMNS = [*SIGNAL_FIELDS, "run_id", "account", "ts", "regime", "members"]
EQUITY_COLUMNS = ["account", "run_id", "ts", "cash", "positions_value", "equity"]


def order_columns(orders: Iterable[Order]) -> list[tuple[Any, ...]]:
    """Orders as the upsert's columns (one state per client id: no row is upserted twice)."""
    return list(zip(*map(order_record, orders), strict=True))


def fill_rows(fills: Iterable[Fill]) -> list[Row]:
    return [(f.fill_id, f.client_order_id, f.account, f.symbol, f.side.value, f.quantity,
             f.price, f.fee, f.fee_currency, f.liquidity, to_dt(f.ts)) for f in fills]


def flow_rows(flows: Iterable[CashFlow]) -> list[Row]:
    return [(f.flow_id, f.account, f.symbol, f.kind, f.amount, f.rate, f.mark, f.notional,
             to_dt(f.ts)) for f in flows]


def signal_rows(signals: Iterable[tuple[str, str, Signal]]) -> list[Row]:
    """(run, account, signal) triples as rows of ``SIGNAL_COLUMNS``."""
    regime = REGIME_CODES.get
    return [signal_fields(s) + (run_id, account, to_dt(s.ts), regime(s.regime),
                                members_json(s.members) if s.members else None)
            for run_id, account, s in signals]


def audit_batch(events: Sequence[AuditEvent]) -> str:
    """Audit events as ``audit_append``'s batch: one JSON text, an array of ``[account,
    run_id, ts_ms, kind, entity, entity_id, payload]`` rows, serialised in one C call (a
    Python call per row and field cost the writer more than the rest of its work). No
    registered secret is stored: the text is searched for each, and only a batch that holds
    one is built again from masked payloads (``json_text``)."""
    rows = [[e.account, e.run_id, e.ts, e.kind, e.entity, e.entity_id, e.payload]
            for e in events]
    text_ = orjson.dumps(rows, default=str, option=orjson.OPT_SORT_KEYS).decode()
    secrets = json_spelled_secrets()
    if secrets and any(spelled in text_ for spelled in secrets):
        for row in rows:
            row[6] = masked(row[6])
        text_ = orjson.dumps(rows, default=str, option=orjson.OPT_SORT_KEYS).decode()
    return text_
