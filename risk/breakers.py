"""Circuit breakers: small plugins that watch one thing each and say when to trip.

Each sees typed observations (equity, candles, closed trades, exchange calls, predictions,
clock ticks) and returns ``Trip`` instructions; the risk manager applies them to the state
machine and audits them. No I/O here.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Any, Protocol

from bot.domain import (
    CandleObs,
    ClockObs,
    EquityObs,
    ExchangeCallObs,
    FeedObs,
    MarginObs,
    PredictionObs,
    TradeClosedObs,
    TradingState,
    Trip,
)

DAY_MS = 86_400_000


Observation = (EquityObs | CandleObs | TradeClosedObs | ExchangeCallObs | PredictionObs
               | ClockObs | FeedObs | MarginObs)


Memory = dict[str, Any]  # a breaker's window as plain JSON


class Breaker(Protocol):
    """Watches one thing. ``state``/``load`` carry its window through the ledger, so a
    restart neither resets it nor changes what it would decide."""

    @property
    def name(self) -> str: ...

    @property
    def watches(self) -> tuple[type, ...]:
        """The observation types it reads."""
        ...

    def observe(self, obs: Observation) -> list[Trip]: ...

    def state(self) -> Memory: ...

    def load(self, memory: Memory) -> None: ...

    def reading(self) -> float:
        """The quantity it compares with its limit, now."""
        ...


def next_utc_midnight(ts: int) -> int:
    return (ts // DAY_MS + 1) * DAY_MS


class DrawdownBreaker:
    """Equity more than ``limit`` below its peak within ``window_ms`` -> HALTED."""

    name = "drawdown"
    watches = (EquityObs,)

    def __init__(self, limit: float = 0.10, window_ms: int = 7 * DAY_MS) -> None:
        self.limit, self.window = limit, window_ms
        self._peaks: deque[tuple[int, float]] = deque()  # decreasing equity, increasing ts

    def observe(self, obs: Observation) -> list[Trip]:
        if not isinstance(obs, EquityObs):
            return []
        q = self._peaks
        while q and q[-1][1] <= obs.equity:
            q.pop()
        q.append((obs.ts, obs.equity))
        while q[0][0] < obs.ts - self.window:
            q.popleft()
        peak = q[0][1]
        dd = 1 - obs.equity / peak if peak > 0 else 0.0
        if dd > self.limit:
            return [Trip(self.name, f"drawdown {dd:.2%} from peak {peak:.2f} within "
                         f"{self.window // DAY_MS}d exceeds {self.limit:.0%}",
                         TradingState.HALTED)]
        return []

    def state(self) -> Memory:
        return {"peaks": [list(p) for p in self._peaks]}

    def load(self, memory: Memory) -> None:
        self._peaks = deque((int(ts), float(eq)) for ts, eq in memory.get("peaks", ()))

    def reading(self) -> float:
        """The current drawdown from the window's peak (0 with no equity seen)."""
        if not self._peaks:
            return 0.0
        peak, last = self._peaks[0][1], self._peaks[-1][1]
        return 1 - last / peak if peak > 0 else 0.0


class DailyLossBreaker:
    """Equity down more than ``limit`` since the UTC day began -> REDUCING until midnight."""

    name = "daily_loss"
    watches = (EquityObs,)

    def __init__(self, limit: float = 0.03) -> None:
        self.limit = limit
        self._day: int | None = None
        self._start = 0.0
        self._last = 0.0  # today's loss so far

    def observe(self, obs: Observation) -> list[Trip]:
        if not isinstance(obs, EquityObs):
            return []
        day = obs.ts // DAY_MS
        if day != self._day:
            self._day, self._start = day, obs.equity
            return []
        loss = 1 - obs.equity / self._start if self._start > 0 else 0.0
        self._last = loss
        if loss > self.limit:
            return [Trip(self.name, f"daily loss {loss:.2%} exceeds {self.limit:.0%}",
                         TradingState.REDUCING, until=next_utc_midnight(obs.ts))]
        return []

    def state(self) -> Memory:
        return {"day": self._day, "start": self._start, "last": self._last}

    def load(self, memory: Memory) -> None:
        self._day = memory.get("day")
        self._start = float(memory.get("start", 0.0))
        self._last = float(memory.get("last", 0.0))

    def reading(self) -> float:
        return self._last


class ConsecutiveLossBreaker:
    """``count`` losing trades in a row -> no entries for ``cooldown_ms``."""

    name = "consecutive_losses"
    watches = (TradeClosedObs,)

    def __init__(self, count: int = 4, cooldown_ms: int = 12 * 3_600_000) -> None:
        self.count, self.cooldown = count, cooldown_ms
        self._streak = 0

    def observe(self, obs: Observation) -> list[Trip]:
        if not isinstance(obs, TradeClosedObs):
            return []
        self._streak = self._streak + 1 if obs.pnl < 0 else 0
        if self._streak >= self.count:
            self._streak = 0
            return [Trip(self.name, f"{self.count} losing trades in a row",
                         cooldown_until=obs.ts + self.cooldown)]
        return []

    def state(self) -> Memory:
        return {"streak": self._streak}

    def load(self, memory: Memory) -> None:
        self._streak = int(memory.get("streak", 0))

    def reading(self) -> float:
        return float(self._streak)


class StaleDataBreaker:
    """No closed candle for ``factor`` timeframes on a symbol -> no entries (until one comes).
    A feed that reports itself stale (its reads keep failing) blocks entries on every symbol
    until it reports data flowing again."""

    name = "stale_data"
    watches = (CandleObs, ClockObs, FeedObs)

    def __init__(self, timeframe_ms: int, factor: float = 2.0) -> None:
        self.max_age = int(factor * timeframe_ms)
        self._last: dict[str, int] = {}
        self._stale: set[str] = set()

    def observe(self, obs: Observation) -> list[Trip]:
        trips: list[Trip] = []
        if isinstance(obs, FeedObs):
            why = f"feed reads failing: {obs.reason}" if obs.stale else "feed data flows again"
            return [Trip(self.name, why, block=("stale:feed", obs.stale))]
        if isinstance(obs, CandleObs):
            self._last[obs.symbol] = obs.ts
            if obs.symbol in self._stale:
                self._stale.discard(obs.symbol)
                trips.append(Trip(self.name, f"{obs.symbol} data fresh again",
                                  block=(f"stale:{obs.symbol}", False)))
        elif isinstance(obs, ClockObs):
            for sym, last in self._last.items():
                if sym not in self._stale and obs.now - last > self.max_age:
                    self._stale.add(sym)
                    trips.append(Trip(self.name, f"no closed {sym} candle for "
                                      f"{(obs.now - last) // 1000}s", block=(f"stale:{sym}", True)))
        return trips

    def state(self) -> Memory:
        return {"last": dict(self._last), "stale": sorted(self._stale)}

    def load(self, memory: Memory) -> None:
        self._last = {str(k): int(v) for k, v in (memory.get("last") or {}).items()}
        self._stale = set(memory.get("stale") or ())

    def adopt_blocks(self, blocks: frozenset[str]) -> None:
        """Blocks restored from the ledger are this breaker's to clear: the next fresh candle
        of the symbol lifts its block, restart or not."""
        self._stale |= {b.split(":", 1)[1] for b in blocks
                        if b.startswith("stale:") and b != "stale:feed"}

    def reading(self) -> float:
        return float(len(self._stale))


class ExchangeErrorBreaker:
    """More than ``max_rate`` of the last ``window`` exchange calls failed -> HALTED."""

    name = "exchange_errors"
    watches = (ExchangeCallObs,)

    def __init__(self, max_rate: float = 0.5, window: int = 40, min_calls: int = 10) -> None:
        self.max_rate, self.min_calls = max_rate, min_calls
        self._calls: deque[bool] = deque(maxlen=window)
        self._failures = 0

    def observe(self, obs: Observation) -> list[Trip]:
        if not isinstance(obs, ExchangeCallObs):
            return []
        calls = self._calls
        if obs.ok and not self._failures:  # the usual call: no failure in the window to count
            calls.append(True)
            return []
        if len(calls) == calls.maxlen and not calls[0]:
            self._failures -= 1  # the oldest failure leaves the window
        calls.append(obs.ok)
        if not obs.ok:
            self._failures += 1
        n = len(calls)
        rate = self._failures / n
        if n >= self.min_calls and rate > self.max_rate:
            return [Trip(self.name, f"exchange error rate {rate:.0%} over {n} calls",
                         TradingState.HALTED)]
        return []

    def state(self) -> Memory:
        return {"calls": "".join("1" if ok else "0" for ok in self._calls)}

    def load(self, memory: Memory) -> None:
        self._calls.clear()
        self._calls.extend(c == "1" for c in str(memory.get("calls", "")))
        self._failures = sum(1 for ok in self._calls if not ok)

    def reading(self) -> float:
        return self._failures / len(self._calls) if self._calls else 0.0


class VolatilityBreaker:
    """ATR above ``k`` times its rolling median -> REDUCING for ``hold_ms``."""

    name = "volatility"
    watches = (CandleObs,)

    def __init__(self, k: float = 3.0, window: int = 200, hold_ms: int = DAY_MS) -> None:
        self.k, self.window, self.hold = k, window, hold_ms
        self._atr: dict[str, deque[float]] = {}
        self._sorted: dict[str, list[float]] = {}  # the same values, kept sorted for the median

    def observe(self, obs: Observation) -> list[Trip]:
        if not isinstance(obs, CandleObs) or not obs.atr > 0:
            return []
        hist = self._atr.get(obs.symbol)
        if hist is None:
            hist = self._atr[obs.symbol] = deque()
        ordered = self._sorted.get(obs.symbol)
        if ordered is None:
            ordered = self._sorted[obs.symbol] = []
        trips = []
        n = len(ordered)
        if n >= self.window // 2:
            med = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
            if med > 0 and obs.atr > self.k * med:
                trips.append(Trip(self.name, f"{obs.symbol} ATR {obs.atr:.4g} > {self.k}x median "
                                  f"{med:.4g}", TradingState.REDUCING, until=obs.ts + self.hold))
        hist.append(obs.atr)
        bisect.insort(ordered, obs.atr)
        if len(hist) > self.window:
            del ordered[bisect.bisect_left(ordered, hist.popleft())]
        return trips

    def state(self) -> Memory:
        return {"atr": {sym: list(h) for sym, h in self._atr.items()}}

    def load(self, memory: Memory) -> None:
        self._atr = {str(sym): deque(float(a) for a in h)
                     for sym, h in (memory.get("atr") or {}).items()}
        self._sorted = {sym: sorted(h) for sym, h in self._atr.items()}

    def reading(self) -> float:
        """The highest ratio of a symbol's latest ATR to its window's median."""
        ratios = []
        for sym, h in self._atr.items():
            ordered = self._sorted[sym]
            if h and ordered:
                med = ordered[len(ordered) // 2]
                ratios.append(h[-1] / med if med > 0 else 0.0)
        return max(ratios, default=0.0)


class MarginRatioBreaker:
    """A perpetual's margin ratio (maintenance margin over the margin behind it) at or above
    ``reduce`` -> REDUCING for ``hold_ms``; at or above ``flatten`` the risk manager also
    closes the position (``RiskManager.on_margin``)."""

    name = "margin_ratio"
    watches = (MarginObs,)

    def __init__(self, reduce: float = 0.5, flatten: float = 0.8, hold_ms: int = DAY_MS) -> None:
        if not 0 < reduce < flatten <= 1:
            raise ValueError(f"margin ratio levels need 0 < reduce ({reduce}) < flatten "
                             f"({flatten}) <= 1")
        self.reduce, self.flatten, self.hold = reduce, flatten, hold_ms
        self._ratio: dict[str, float] = {}

    def observe(self, obs: Observation) -> list[Trip]:
        if not isinstance(obs, MarginObs):
            return []
        if obs.ratio <= 0:
            self._ratio.pop(obs.symbol, None)
            return []
        self._ratio[obs.symbol] = obs.ratio
        if obs.ratio >= self.reduce:
            return [Trip(self.name, f"{obs.symbol} margin ratio {obs.ratio:.3f} >= "
                         f"{self.reduce}", TradingState.REDUCING, until=obs.ts + self.hold)]
        return []

    def state(self) -> Memory:
        return {"ratio": dict(self._ratio)}

    def load(self, memory: Memory) -> None:
        self._ratio = {str(k): float(v) for k, v in (memory.get("ratio") or {}).items()}

    def reading(self) -> float:
        return max(self._ratio.values(), default=0.0)


class ModelDegradationBreaker:
    """Rolling live accuracy more than ``drop`` below the validation baseline -> REDUCING,
    and a retrain is requested. Inactive without a validation baseline."""

    name = "model_degradation"
    watches: tuple[type, ...] = (PredictionObs,)

    def __init__(self, baseline: float | None, drop: float = 0.05, window: int = 200) -> None:
        self.baseline, self.drop = baseline, drop
        if baseline is None:
            self.watches = ()  # nothing to compare with: stay out of the hot path
        self._hits: deque[bool] = deque(maxlen=window)
        self._tripped = False

    def observe(self, obs: Observation) -> list[Trip]:
        if self.baseline is None or not isinstance(obs, PredictionObs):
            return []
        self._hits.append(obs.correct)
        if len(self._hits) < self._hits.maxlen:  # type: ignore[operator]
            return []
        acc = sum(self._hits) / len(self._hits)
        if acc < self.baseline - self.drop and not self._tripped:
            self._tripped = True
            return [Trip(self.name, f"live accuracy {acc:.1%} is more than {self.drop:.0%} "
                         f"below validation {self.baseline:.1%}", TradingState.REDUCING,
                         retrain=True)]
        if acc >= self.baseline - self.drop:
            self._tripped = False
        return []

    def state(self) -> Memory:
        return {"hits": "".join("1" if h else "0" for h in self._hits),
                "tripped": self._tripped}

    def load(self, memory: Memory) -> None:
        self._hits.clear()
        self._hits.extend(c == "1" for c in str(memory.get("hits", "")))
        self._tripped = bool(memory.get("tripped", False))

    def reading(self) -> float:
        return sum(self._hits) / len(self._hits) if self._hits else 0.0

    def health(self) -> dict[str, object]:
        """Live accuracy against the validation baseline, for the scheduled model check."""
        if self.baseline is None:
            return {"status": "inactive", "reason": "no validation baseline accuracy"}
        return {"status": "tripped" if self._tripped else "ok",
                "live_accuracy": self.reading() if self._hits else None,
                "baseline": self.baseline, "window": len(self._hits)}
