"""Run statistics for the summary: P&L, drawdown, Sharpe, exposure. Pure arithmetic."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal

from bot.domain import ZERO, CashFlow, Fill, Side, timeframe_ms

YEAR_MS = 365 * 24 * 3600 * 1000


@dataclass
class RunStats:
    timeframe: str
    starting_equity: Decimal
    candles: int = 0
    steps: int = 0
    gaps: int = 0
    missing_candles: int = 0
    signals: int = 0
    orders: int = 0
    rejected: int = 0
    fills: int = 0
    fees: Decimal = ZERO
    traded: Decimal = ZERO  # notional bought and sold (turnover's numerator)
    buys: int = 0
    sells: int = 0
    exposed_steps: int = 0
    long_entries: int = 0  # a flat (or short) position became long
    short_entries: int = 0  # a flat (or long) position became short
    funding_paid: Decimal = ZERO  # perpetuals: funding the account paid (a positive sum)
    funding_received: Decimal = ZERO
    funding_events: int = 0
    liquidations: int = 0  # positions the venue closed
    first_ts: int | None = None
    last_ts: int | None = None
    _equity: list[float] = field(default_factory=list)
    _ts: list[int] = field(default_factory=list)

    def on_step(self, ts: int, equity: Decimal, exposed: bool) -> None:
        self.steps += 1
        self.first_ts = ts if self.first_ts is None else self.first_ts
        self.last_ts = ts
        self._equity.append(float(equity))
        self._ts.append(ts)
        if exposed:
            self.exposed_steps += 1

    def on_fill(self, fill: Fill) -> None:
        self.fills += 1
        self.fees += fill.fee
        self.traded += fill.notional
        if fill.side is Side.BUY:
            self.buys += 1
        else:
            self.sells += 1

    def on_entry(self, before: Decimal, after: Decimal) -> None:
        if after > 0 >= before:
            self.long_entries += 1
        elif after < 0 <= before:
            self.short_entries += 1

    def on_flow(self, flow: CashFlow) -> None:
        self.funding_events += 1
        if flow.amount < 0:
            self.funding_paid -= flow.amount
        else:
            self.funding_received += flow.amount

    def equity_curve(self) -> list[tuple[int, float]]:
        return list(zip(self._ts, self._equity, strict=False))

    def max_drawdown(self) -> float:
        peak, worst = -math.inf, 0.0
        for e in self._equity:
            peak = max(peak, e)
            if peak > 0:
                worst = max(worst, (peak - e) / peak)
        return worst

    def sharpe(self) -> float:
        """Annualized Sharpe of per-step equity returns (risk-free rate 0)."""
        eq = self._equity
        rets = [b / a - 1 for a, b in zip(eq, eq[1:], strict=False) if a > 0]
        if len(rets) < 2:
            return 0.0
        mean = sum(rets) / len(rets)
        var = sum((r - mean) ** 2 for r in rets) / (len(rets) - 1)
        if var <= 0:
            return 0.0
        per_year = YEAR_MS / timeframe_ms(self.timeframe)
        return mean / math.sqrt(var) * math.sqrt(per_year)

    def summary(self, final_equity: Decimal, cash: Decimal, elapsed_s: float) -> dict[str, object]:
        net = final_equity - self.starting_equity
        return {
            "candles": self.candles,
            "steps": self.steps,
            "gaps": self.gaps,
            "missing_candles": self.missing_candles,
            "signals": self.signals,
            "orders": self.orders,
            "rejected": self.rejected,
            "trades": self.fills,
            "buys": self.buys,
            "sells": self.sells,
            "long_entries": self.long_entries,
            "short_entries": self.short_entries,
            "funding_paid": str(self.funding_paid),
            "funding_received": str(self.funding_received),
            "funding_events": self.funding_events,
            "liquidations": self.liquidations,
            "fees": str(self.fees),
            "traded_notional": str(self.traded),
            "turnover": round(float(self.traded / self.starting_equity), 4)
            if self.starting_equity > 0 else 0.0,
            "starting_equity": str(self.starting_equity),
            "final_equity": str(final_equity),
            "cash": str(cash),
            "net_pnl": str(net),
            "return_pct": round(float(net / self.starting_equity) * 100, 4),
            "max_drawdown_pct": round(self.max_drawdown() * 100, 4),
            "sharpe": round(self.sharpe(), 4),
            "exposure_pct": round(100 * self.exposed_steps / self.steps, 4) if self.steps else 0.0,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "elapsed_s": round(elapsed_s, 3),
            "candles_per_s": round(self.candles / elapsed_s, 1) if elapsed_s > 0 else None,
        }
