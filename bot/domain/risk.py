"""Risk's messages: trading states and kill levels, state transitions, breaker trips and the
observations breakers are fed, protective orders the risk manager asks for, and its readings
and report. The logic that produces them is ``risk/``."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from bot.domain.message import message


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


class KillLevel(StrEnum):
    PAUSE = "pause"
    CANCEL = "cancel"
    FLATTEN = "flatten"


@message
class RiskState:
    """The persisted part; ``snapshot``/``restore`` round-trip it through the ledger."""

    state: TradingState = TradingState.ACTIVE
    reason: str = "start"
    since_ts: int = 0
    reducing_until: int | None = None  # None with REDUCING: until an operator resumes
    kill_level: KillLevel | None = None
    operator: str | None = None
    cooldown_until: int | None = None
    blocks: frozenset[str] = field(default_factory=frozenset)  # e.g. {"stale:BTC/USDT"}

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state.value, "reason": self.reason, "since_ts": self.since_ts,
                "reducing_until": self.reducing_until,
                "kill_level": self.kill_level.value if self.kill_level else None,
                "operator": self.operator, "cooldown_until": self.cooldown_until,
                "blocks": sorted(self.blocks)}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> RiskState:
        return cls(TradingState(data["state"]), data.get("reason", ""), data.get("since_ts", 0),
                   data.get("reducing_until"),
                   KillLevel(data["kill_level"]) if data.get("kill_level") else None,
                   data.get("operator"), data.get("cooldown_until"),
                   frozenset(data.get("blocks") or ()))


@message
class Transition:
    before: TradingState
    after: TradingState
    reason: str
    source: str  # breaker name, "operator", "kill", "clock"
    ts: int
    operator: str | None = None
    kill_level: KillLevel | None = None


@message
class Trip:
    breaker: str
    reason: str
    target: TradingState | None = None  # None: no state change (cooldown or block only)
    until: int | None = None  # REDUCING end
    cooldown_until: int | None = None
    block: tuple[str, bool] | None = None  # (key, on)
    retrain: bool = False


@message
class EquityObs:
    ts: int
    equity: float  # cash + positions marked to market (unrealized P&L included)


@message
class CandleObs:
    ts: int  # close time
    symbol: str
    atr: float


@message
class TradeClosedObs:
    ts: int
    symbol: str
    pnl: float


@message
class ExchangeCallObs:
    ts: int
    ok: bool


@message
class PredictionObs:
    ts: int
    correct: bool


@message
class ClockObs:
    now: int


@message
class FeedObs:
    ts: int
    stale: bool  # the feed's reads keep failing (True) or data flows again (False)
    reason: str = ""


@message
class MarginObs:
    ts: int
    symbol: str
    ratio: float  # maintenance margin over the margin behind the position (1.0: liquidation)


@message
class Protect:
    """What a position needs at the venue: a stop at ``stop_price`` (None: no stop), or an
    exit at market (``exit_reason``)."""

    symbol: str
    stop_price: Decimal | None = None
    exit_reason: str | None = None


@message
class BreakerReading:
    """One breaker's current reading against its limit, for ``stackbot status``."""

    name: str
    reading: float
    limit: float
    unit: str  # "share", "count", "ratio"


@dataclass
class RiskReport:
    """What fired, for the run summary: the risk manager's running tally (mutable, the one
    exception here; it is read at the end of a run, never passed between stages)."""

    trips: dict[str, int] = field(default_factory=dict)
    transitions: list[dict[str, object]] = field(default_factory=list)
    decisions: dict[str, int] = field(default_factory=dict)
    retrain_requests: int = 0
    guard_rejections: int = 0  # entries the liquidation guard refused
