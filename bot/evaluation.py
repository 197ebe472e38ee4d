"""Glue for ``stackbot evaluate``: out-of-sample predictions, engine backtests per predictor,
the sizing comparison, then the report.

The sizing comparison trades the ensemble's out-of-sample p through the engine on the same
test windows, with the same strategy (entries, exits, time limit), under different sizing
rules; only the size differs, except for "Kelly fed an uncalibrated p", whose p also decides
its entries. Buy & hold is computed from the prices (equal weights, bought at each test
window's first open and sold at its last close, fees and slippage both ways, no stops), since
the risk manager's exposure caps and stops would not let the engine hold it. Every row also
gets bootstrap intervals, and every predictor Diebold-Mariano tests
(``models/significance.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bot.brokers.paper import static_markets
from bot.config import Settings
from bot.domain import CandleSeries, MarketSpec, timeframe_ms
from bot.training import members_from
from models.calibrate import ece
from models.device import pick_device
from models.evaluate import (
    PrecomputedSource,
    WithoutProbability,
    accuracy_over_time,
    coverage,
    fold_table,
    load,
    metrics_table,
    oof_table,
    out_of_sample,
    reliability_data,
    signal_tables,
    tft_importance,
)
from models.labels import barrier_from
from models.report import write_report
from models.significance import log_losses, step_returns, verdicts
from models.significance import sharpe as annualised_sharpe
from models.train import PRESETS, TrainConfig, with_barrier
from strategies.ensemble import EnsembleStrategy

# (row name, p the strategy sees, risk overrides, withhold p from risk)
SIZING_RULES: tuple[tuple[str, str, dict[str, Any], bool], ...] = (
    ("kelly_0.25", "ensemble", {"kelly_fraction": 0.25}, False),
    ("kelly_0.5", "ensemble", {"kelly_fraction": 0.5}, False),
    ("fixed_1pct_risk", "ensemble", {"fixed_risk_per_trade": 0.01}, True),
    ("kelly_0.25_uncalibrated_p", "ensemble_uncalibrated", {"kelly_fraction": 0.25}, False),
)


UNCAPPED = {"max_risk_per_trade": 0.2, "max_exposure_symbol": Decimal(1),
            "max_exposure_total": Decimal(1)}
UNCAPPED_TAG = "(caps lifted)"


def round_trip_cost(settings: Settings, markets: Sequence[MarketSpec] = ()) -> float:
    """Fees and slippage both ways, as the engine prices them (``PaperSettings``)."""
    return settings.paper.round_trip_cost(markets)


PERPETUAL_COLUMNS = ("long_entries", "short_entries", "funding_paid", "funding_received",
                     "liquidations", "liquidation_guard_rejections")


def buy_and_hold(
    series: Sequence[CandleSeries], windows: Sequence[tuple[int, int]], settings: Settings,
    cost: float | None = None,
) -> dict[str, Any]:
    """Buy & hold over each test window [start, end): equal weights bought at the window's
    first open and sold at its last close (one round trip per symbol and window, fees and
    slippage both ways, no stops), marked to market every candle; the proceeds of one window
    buy the next. A perpetual is held long at 1x and pays (or receives) funding at each
    funding time in the window: size x mark (the candle's close where no mark) x rate."""
    cost = (round_trip_cost(settings) if cost is None else cost) / 2
    equity0 = float(settings.paper.starting_balance)
    cash, bought, sold, trades = equity0, 0.0, 0.0, 0
    funding_paid = funding_received = 0.0
    equity: list[tuple[int, float]] = []
    for start, end in windows:
        curves = []
        held = [s for s in series if any(start <= x.ts < end for x in s.candles)]
        for s in held:
            c = [x for x in s.candles if start <= x.ts < end]
            qty = cash / len(held) * (1 - cost) / c[0].open
            bought += cash / len(held)
            flows = _funding_flows(s, c, qty)
            funding_paid += sum(-f for f in flows.values() if f < 0)
            funding_received += sum(f for f in flows.values() if f > 0)
            booked = 0.0
            curve = {}
            for x in c:
                booked += flows.get(x.ts, 0.0)
                curve[x.ts] = qty * x.close + booked
            curves.append(curve)
        if not curves:
            continue
        stamps = sorted(set().union(*curves))
        last = [0.0] * len(curves)
        for ts in stamps:
            for i, cv in enumerate(curves):
                last[i] = cv.get(ts, last[i])
            equity.append((ts, sum(last)))
        sold += equity[-1][1]
        cash = equity[-1][1] * (1 - cost)
        trades += 2 * len(curves)
    final = cash
    fees = (bought + sold) * cost
    vals = np.array([e for _, e in equity]) if equity else np.array([equity0])
    rets = step_returns(equity)
    per_year = 365 * 86_400_000 / timeframe_ms(settings.timeframe)
    sharpe = float(annualised_sharpe(rets, per_year)) if len(rets) > 1 else 0.0
    peak = np.maximum.accumulate(vals)
    return {
        "return_pct": round(100 * (final / equity0 - 1), 4),
        "sharpe": round(sharpe, 4),
        "max_drawdown_pct": round(float(100 * ((peak - vals) / peak).max()), 4),
        "trades": trades,
        "turnover": round((bought + sold) / equity0, 4),
        "fees_pct": round(100 * fees / equity0, 4),
        "equity": equity,
        "final_equity": final,
        "funding_paid": round(funding_paid, 8),
        "funding_received": round(funding_received, 8),
    }


def _funding_flows(s: CandleSeries, candles: Sequence[Any], qty: float) -> dict[int, float]:
    """A long of ``qty`` held over ``candles``: the funding it books at each funding time,
    keyed by the candle that opens at or after it and priced at the mark that closed before
    it, as the paper venue books it (a positive rate: longs pay)."""
    if not s.funding or not candles:
        return {}
    stamps = [x.ts for x in candles]
    out: dict[int, float] = {}
    i = 0
    for f in s.funding:
        if not stamps[0] < f.ts <= stamps[-1]:
            continue  # held from the first candle's open to the last candle's close
        while stamps[i] < f.ts:
            i += 1
        before = candles[i - 1]
        price = before.mark.close if before.mark is not None else before.close
        out[candles[i].ts] = out.get(candles[i].ts, 0.0) - qty * price * f.rate
    return out


class Timer:
    """Elapsed wall time per part of the evaluation, in the order the parts ran."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, part: str) -> None:
        now = time.perf_counter()
        self.parts[part] = self.parts.get(part, 0.0) + now - self._t
        self._t = now

    def summary(self) -> str:
        total = sum(self.parts.values())
        return (
            ", ".join(f"{k} {_clock(v)}" for k, v in self.parts.items())
            + f"; total {_clock(total)}"
        )


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s"


def progress_bars() -> Progress:
    return Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )


async def run_evaluation(
    settings: Settings,
    files: Sequence[Path],
    symbols: Sequence[str] | None,
    out_dir: Path,
    preset: str,
    models: str | None,
    folds: int,
    say: Callable[[str], Any] = print,
) -> tuple[Path, dict[str, Any]]:
    from bot.app import backtest
    from bot.feeds.series import load_series

    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}")
    timer = Timer()
    barrier = barrier_from(settings.risk)
    cfg = with_barrier(
        TrainConfig(**{**vars(PRESETS[preset]), "device": pick_device("auto")}), barrier
    )
    names = members_from(models)
    series = load_series(files, settings.timeframe, symbols)
    markets = await static_markets()([s.symbol for s in series])
    perpetual = any(m.margined for m in markets.values())
    data = load(series, barrier)
    timer.lap("features and labels")
    say(
        f"training {len(names)} members on {folds} expanding walk-forward fold(s) for the bet "
        f"{barrier.describe()}..."
    )
    with progress_bars() as bars:
        fold_bars: dict[int, Any] = {}

        def on_step(k: int, n: int, what: str) -> None:
            if k not in fold_bars:
                fold_bars[k] = bars.add_task(f"fold {k + 1}/{n}",
                                             total=len(names) * (cfg.oof_folds + 1) + 1, info="")
            bars.update(fold_bars[k], advance=1, info=f"{what} done")

        oos = out_of_sample(data, cfg, names, folds, on_step)
    timer.lap(f"training ({folds} folds)")
    metrics = metrics_table(oos)
    stages = metrics_table(oos, stages=True)
    tables = signal_tables(oos, data)
    start = min(oos.ts)
    end = max(oos.ts) + timeframe_ms(settings.timeframe)
    cost = round_trip_cost(settings, list(markets.values()))
    step = timeframe_ms(settings.timeframe)

    def strategy() -> EnsembleStrategy:
        return EnsembleStrategy(
            barrier.k_stop,
            barrier.k_target,
            barrier.horizon,
            step,
            cost=cost,
            max_dispersion=settings.strategy.max_dispersion,
            shorts=perpetual and settings.strategy.shorts,
        )

    async def trade(name: str, source: str, risk: dict[str, Any], fixed: bool) -> dict[str, Any]:
        s2 = settings.model_copy(update={"risk": settings.risk.model_copy(update=risk)})
        strat: Any = WithoutProbability(strategy()) if fixed else strategy()
        outcome = await backtest(
            s2, series, None, start, end, stack=(PrecomputedSource(source, tables[source]), strat)
        )
        s = outcome.summary
        return {
            "return_pct": s["return_pct"],
            "sharpe": s["sharpe"],
            "max_drawdown_pct": s["max_drawdown_pct"],
            "trades": s["trades"],
            "turnover": s["turnover"],
            "fees_pct": round(
                100 * float(Decimal(str(s["fees"])) / Decimal(str(s["starting_equity"]))), 4
            ),
            "equity": outcome.equity,
            "run_id": outcome.run_id,
            **({k: s[k] for k in PERPETUAL_COLUMNS} if perpetual else {}),
        }

    trading: dict[str, dict[str, Any]] = {}
    sizing: dict[str, dict[str, Any]] = {}
    with progress_bars() as bars:
        task = bars.add_task("trading predictors", total=len(oos.p), info="")
        for name in oos.p:
            trading[name] = await trade(name, name, {}, False)
            metrics[name].update({k: trading[name][k] for k in ("return_pct", "sharpe")})
            bars.update(task, advance=1, info=name)
        timer.lap("trading predictors")
        task = bars.add_task("sizing comparison", total=2 * len(SIZING_RULES), info="")
        for row, source, risk, fixed in SIZING_RULES:
            same = (
                source == "ensemble"
                and not fixed
                and risk == {"kelly_fraction": settings.risk.kelly_fraction}
            )
            sizing[row] = trading["ensemble"] if same else await trade(row, source, risk, fixed)
            bars.update(task, advance=1, info=row)
        folds_ts = np.array(oos.fold)
        windows = [
            (
                int(np.array(oos.ts)[folds_ts == k].min()),
                int(np.array(oos.ts)[folds_ts == k].max()) + step,
            )
            for k in sorted(set(oos.fold))
        ]
        sizing["buy_and_hold"] = buy_and_hold(series, windows, settings, cost)
        sizing["always_flat"] = {
            "return_pct": 0.0,
            "sharpe": 0.0,
            "max_drawdown_pct": 0.0,
            "trades": 0,
            "turnover": 0.0,
            "fees_pct": 0.0,
            "equity": [
                (t, float(settings.paper.starting_balance))
                for t, _ in sizing["buy_and_hold"]["equity"]
            ],
        }
        # the same rules with the caps that bind lifted, so the rule itself shows (spot still
        # cannot spend more than its cash)
        for row, source, risk, fixed in SIZING_RULES:
            sizing[f"{row} {UNCAPPED_TAG}"] = await trade(row, source, {**risk, **UNCAPPED}, fixed)
            bars.update(task, advance=1, info=f"{row} {UNCAPPED_TAG}")
        timer.lap("sizing comparison")
    lab = np.array(oos.labeled)
    y = np.array(oos.up)[lab]
    calibration = {
        "ece_final": ece(np.array(oos.p["ensemble"])[lab], y),
        **{f"ece_{k}": ece(np.array(v)[lab], y) for k, v in oos.stages.items()},
        "n": int(lab.sum()),
        "timeouts": int((~lab).sum()),
    }
    losses = {n: log_losses(np.array(p)[lab], y) for n, p in oos.p.items()}
    curves = {
        **{n: t["equity"] for n, t in trading.items()},
        **{n: t["equity"] for n, t in sizing.items()},
    }
    rets = {n: step_returns(eq or []) for n, eq in curves.items()}
    longest = max((len(r) for r in rets.values()), default=0)
    verdict = verdicts(
        losses,
        "base_rate",
        ("momentum_sign", "logistic_regression", "lightgbm"),
        barrier.horizon,
        rets,
        365 * 86_400_000 / step,
        block=max(barrier.horizon, round(longest ** (1 / 3))),
    )
    timer.lap("statistics")
    fmt = lambda ms: datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")  # noqa: E731
    meta = {
        "symbols": [s.symbol for s in series],
        "timeframe": settings.timeframe,
        "preset": preset,
        "lookback": cfg.lookback,
        "barrier": barrier.describe(),
        "break_even": 1 / (1 + barrier.k_target / barrier.k_stop),
        "perpetual": perpetual,
        "shorts": perpetual and settings.strategy.shorts,
        "cost": cost,
        "kelly_fraction": settings.risk.kelly_fraction,
        "max_risk_per_trade": settings.risk.max_risk_per_trade,
        "max_exposure_symbol": float(settings.risk.max_exposure_symbol),
        "max_exposure_total": float(settings.risk.max_exposure_total),
        "train_windows": cfg.max_train_samples,
        "epochs": cfg.epochs,
        "folds": folds,
        "test_from": fmt(start),
        "test_to": fmt(end),
    }
    meta["coverage"] = coverage(oos, series, step)
    meta["folds_table"] = fold_table(oos, names)
    meta["oof_table"] = oof_table(oos)
    meta["combiners"] = oos.combiners
    meta["tft_importance"] = tft_importance(oos)
    meta["non_members"] = [n for n in oos.oof_p if n not in names]
    meta["elapsed"] = timer.summary()
    path = write_report(
        out_dir,
        meta,
        metrics,
        trading,
        accuracy_over_time(oos),
        reliability_data(oos),
        sizing,
        stages,
        calibration,
        verdict,
    )
    timer.lap("report")
    say(f"elapsed: {timer.summary()}")
    return path, {
        "predictors": metrics,
        "oof": meta["oof_table"],
        "combiners": oos.combiners,
        "sizing": sizing,
        "calibration": calibration,
        "verdict": verdict,
        "elapsed": dict(timer.parts),
    }
