"""Glue for ``stackbot evaluate``: out-of-sample predictions, engine backtests per predictor,
then the report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.domain import timeframe_ms
from models.cli_support import members_from, pick_device
from models.evaluate import (
    PrecomputedSource, ThresholdStrategy, accuracy_over_time, load, metrics_table,
    out_of_sample, reliability_data, signal_tables,
)
from models.report import write_report
from models.train import PRESETS, TrainConfig


async def run_evaluation(settings: Settings, files: Sequence[Path], symbols: Sequence[str] | None,
                         out_dir: Path, preset: str, models: str | None, folds: int,
                         say: Callable[[str], Any] = print) -> tuple[Path, dict[str, Any]]:
    from bot.app import backtest, load_series

    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}")
    cfg = TrainConfig(**{**vars(PRESETS[preset]), "device": pick_device("auto")})
    names = members_from(models)
    series = load_series(files, settings.timeframe, symbols)
    data, atr = load(series)
    say(f"training {len(names)} members on {folds} walk-forward fold(s)...")
    oos = out_of_sample(data, cfg, names, folds,
                        lambda k, n: say(f"  fold {k + 1}/{n} done"))
    metrics = metrics_table(oos)
    tables = signal_tables(oos, atr, data)
    start = min(oos.ts)
    end = max(oos.ts) + timeframe_ms(settings.timeframe)
    trading: dict[str, dict[str, Any]] = {}
    say(f"trading {len(tables)} predictors through the engine...")
    for name, table in tables.items():
        outcome = await backtest(settings, series, None, start, end,
                                 stack=(PrecomputedSource(name, table), ThresholdStrategy()))
        s = outcome.summary
        trading[name] = {"return_pct": s["return_pct"], "sharpe": s["sharpe"],
                         "max_drawdown_pct": s["max_drawdown_pct"], "trades": s["trades"],
                         "equity": outcome.equity, "run_id": outcome.run_id}
        metrics[name].update({k: trading[name][k] for k in ("return_pct", "sharpe")})
    fmt = lambda ms: datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")  # noqa: E731
    meta = {"symbols": [s.symbol for s in series], "timeframe": settings.timeframe,
            "preset": preset, "lookback": cfg.lookback, "horizon": cfg.horizon,
            "cost": cfg.cost, "folds": folds, "test_from": fmt(start), "test_to": fmt(end)}
    path = write_report(out_dir, meta, metrics, trading, accuracy_over_time(oos),
                        reliability_data(oos))
    return path, metrics
