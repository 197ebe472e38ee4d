"""The messages that flow between stages, and every value that crosses a stage boundary: one
home, a module per subject. Import them from here (``from bot.domain import Candle``).

    feed -> features -> signal source -> strategy -> risk -> broker -> ledger / bus

- ``market``: timeframes, candles, gaps, warm-up history, feed states, regimes, market specs,
  candle series;
- ``trading``: signals, intents, risk decisions, orders and their states, fills, positions,
  equity snapshots, audit events;
- ``venue``: an order's update from the venue, the venue's side of a reconciliation;
- ``control``: an operator's command;
- ``ledger``: a unit of work for the ledger, and the account state it returns at start-up;
- ``risk``: trading states, kill levels, transitions, breaker trips and observations,
  protective orders, readings and the risk report.

Every message is a frozen, slotted dataclass (declared with ``@message``, ``message.py``:
fast to build and to copy with ``evolve``) or an enum (the risk report, a running tally,
and the unit of work, which is filled in place before it is committed, are the mutable
exceptions). Times are integer milliseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

from bot.domain.control import (
    Channel,
    CommandRecord,
    ControlRequest,
    ControlResult,
    Housekeeping,
    Job,
    Kill,
    OperatorCommand,
    PromotedModel,
    Reject,
    Resume,
    RetrainDone,
    RetrainOutcome,
    command_from,
)
from bot.domain.ledger import (
    AccountState,
    ActiveModel,
    ModelVersion,
    UnitOfWork,
)
from bot.domain.market import (
    TIMEFRAME_MS,
    ZERO,
    Candle,
    CandleSeries,
    FeedState,
    FeedStatus,
    FundingRate,
    Gap,
    InstrumentKind,
    MarginBracket,
    MarginMode,
    MarkBar,
    MarketSpec,
    Mode,
    Regime,
    Warmup,
    timeframe_ms,
)
from bot.domain.message import evolve, message
from bot.domain.risk import (
    BreakerReading,
    CandleObs,
    ClockObs,
    EquityObs,
    ExchangeCallObs,
    FeedObs,
    KillLevel,
    MarginObs,
    PredictionObs,
    Protect,
    RiskReport,
    RiskState,
    TradeClosedObs,
    TradingState,
    Transition,
    Trip,
)
from bot.domain.trading import (
    ALLOWED_TRANSITIONS,
    AuditEvent,
    CashFlow,
    EquitySnapshot,
    Fill,
    InvalidTransition,
    Order,
    OrderIntent,
    OrderStatus,
    OrderType,
    Position,
    RiskDecision,
    Side,
    Signal,
)
from bot.domain.venue import (
    OrderUpdate,
    VenueState,
)

__all__ = [
    "evolve",
    "message",
    "ALLOWED_TRANSITIONS",
    "AccountState",
    "ActiveModel",
    "ModelVersion",
    "AuditEvent",
    "BreakerReading",
    "Candle",
    "CandleObs",
    "CandleSeries",
    "ClockObs",
    "CommandRecord",
    "ControlRequest",
    "Channel",
    "Housekeeping",
    "Job",
    "Kill",
    "OperatorCommand",
    "Reject",
    "RetrainDone",
    "Resume",
    "command_from",
    "ControlResult",
    "PromotedModel",
    "RetrainOutcome",
    "EquityObs",
    "EquitySnapshot",
    "ExchangeCallObs",
    "FeedObs",
    "FeedState",
    "FeedStatus",
    "Fill",
    "Gap",
    "FundingRate",
    "InstrumentKind",
    "MarginBracket",
    "MarginMode",
    "MarkBar",
    "CashFlow",
    "InvalidTransition",
    "KillLevel",
    "MarginObs",
    "MarketSpec",
    "Mode",
    "Order",
    "OrderIntent",
    "OrderStatus",
    "OrderType",
    "OrderUpdate",
    "Position",
    "PredictionObs",
    "Protect",
    "Regime",
    "RiskDecision",
    "RiskReport",
    "RiskState",
    "Side",
    "Signal",
    "TIMEFRAME_MS",
    "TradeClosedObs",
    "TradingState",
    "Transition",
    "Trip",
    "UnitOfWork",
    "VenueState",
    "Warmup",
    "ZERO",
    "timeframe_ms",
]
