"""``stackbot train``, ``evaluate`` and ``models``: the model commands."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bot.cli_common import ConfigOpt, DataDirOpt, DbOpt, out, whole_ids_table
from bot.cli_common import fail as _fail
from bot.cli_common import load as _settings
from bot.cli_common import with_db as _with_db
from bot.errors import StackbotError

models_app = typer.Typer(no_args_is_help=True, help="The model registry.")


def train(
    data: Annotated[list[Path], typer.Option("--data", help="candle file; repeat per symbol")],
    timeframe: Annotated[str, typer.Option("--timeframe", "-t")] = "1h",
    symbols: Annotated[str | None, typer.Option(help="comma list, one per --data")] = None,
    preset: Annotated[str, typer.Option(help="tiny, quick or full (see the README)")] = "quick",
    models: Annotated[str | None, typer.Option(help="members to train (default: all)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    promote_mode: Annotated[
        str, typer.Option("--promote", help="always, if-none, if-better or never")
    ] = "if-none",
    seed: Annotated[int | None, typer.Option(help="override the preset's seed")] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Walk-forward training of the model ensemble; checkpoints are registered as candidates."""
    from bot.feeds.series import load_series
    from bot.training import members_from, run_training, store
    from models.labels import barrier_from
    from models.train import PRESETS

    if preset not in PRESETS:
        raise _fail(ValueError(f"--preset must be one of {', '.join(PRESETS)}"))
    if promote_mode not in ("always", "if-none", "if-better", "never"):
        raise _fail(ValueError("--promote must be always, if-none, if-better or never"))
    try:
        settings = _settings(config, timeframe=timeframe, data_dir=data_dir, database__url=db)
        names = members_from(models)
        syms = [x.strip().upper() for x in symbols.split(",")] if symbols else None
        series = load_series(data, timeframe, syms)
        t0 = time.perf_counter()
        result = run_training(
            series, timeframe, preset, names, device, barrier_from(settings.risk), seed
        )
        elapsed = time.perf_counter() - t0

        ens_id, directory, promoted, why = _with_db(
            settings,
            lambda engine: store(
                engine, result, settings.home / "models", timeframe, promote_mode, series
            ),
        )
    except (StackbotError, ValueError) as exc:
        raise _fail(exc) from None
    table = Table(title=f"ensemble {ens_id} (trained in {elapsed:.0f}s)")
    for col in ("member", "test acc", "test log-loss", "Brier raw->cal", "ECE raw->cal", "s/epoch"):
        table.add_column(col)
    for m in result.members:
        raw, cal = m.metrics["test_raw"], m.metrics["test_calibrated"]
        table.add_row(
            m.name,
            f"{cal['accuracy']:.3f}",
            f"{cal['log_loss']:.4f}",
            f"{raw['brier']:.4f}->{cal['brier']:.4f}",
            f"{raw['ece']:.4f}->{cal['ece']:.4f}",
            f"{m.metrics['seconds_per_epoch']:.2f}",
        )
    meta = result.meta_metrics["test"]
    table.add_row(
        "meta (ensemble)",
        f"{meta['accuracy']:.3f}",
        f"{meta['log_loss']:.4f}",
        f"{meta['brier']:.4f}",
        f"{meta['ece']:.4f}",
        "",
    )
    out.print(table)
    bar, shares = result.meta_metrics["barrier"], result.meta_metrics["labels"]["train"]
    out.print(
        f"trained for: target {bar['k_target']:g} ATR before stop {bar['k_stop']:g} ATR "
        f"within {bar['horizon']} candles; train outcomes: target first "
        f"{shares['target_first']:.1%}, stop first {shares['stop_first']:.1%}, timeout "
        f"{shares['timeout']:.1%} (timeouts excluded from the target)"
    )
    out.print(f"checkpoints: {directory}")
    out.print(f"{'promoted to active' if promoted else 'registered as candidate'} ({why})")


def evaluate(
    data: Annotated[list[Path], typer.Option("--data", help="candle file; repeat per symbol")],
    out_dir: Annotated[Path, typer.Option("--out", help="report directory")],
    timeframe: Annotated[str, typer.Option("--timeframe", "-t")] = "1h",
    symbols: Annotated[str | None, typer.Option(help="comma list, one per --data")] = None,
    preset: Annotated[str, typer.Option(help="tiny, quick or full (see the README)")] = "quick",
    models: Annotated[str | None, typer.Option(help="members (default: all)")] = None,
    folds: Annotated[
        int,
        typer.Option(
            help="walk-forward folds; their test parts tile the file after the first training span"
        ),
    ] = 2,
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Walk-forward out-of-sample report: members, ensemble and baselines; Markdown + PNG."""
    from bot.evaluation import run_evaluation

    try:
        settings = _settings(
            config, timeframe=timeframe, data_dir=data_dir, database__url=db, mode="backtest"
        )
        syms = [x.strip().upper() for x in symbols.split(",")] if symbols else None
        path, result = asyncio.run(
            run_evaluation(settings, data, syms, out_dir, preset, models, folds, out.print)
        )
    except (StackbotError, ValueError) as exc:
        raise _fail(exc) from None
    table = Table(title="out of sample: P(target before stop)")
    for col in ("predictor", "accuracy", "log-loss", "Brier", "ECE", "return %", "Sharpe"):
        table.add_column(col)
    for name, m in result["predictors"].items():
        table.add_row(
            name,
            f"{m['accuracy']:.4f}",
            f"{m['log_loss']:.4f}",
            f"{m['brier']:.4f}",
            f"{m['ece']:.4f}",
            f"{m.get('return_pct', float('nan')):.2f}",
            f"{m.get('sharpe', float('nan')):.2f}",
        )
    out.print(table)
    sizing = Table(title="sizing on the ensemble's p")
    for col in ("rule", "return %", "Sharpe", "max DD %", "turnover", "fees %", "trades"):
        sizing.add_column(col)
    for name, t in result["sizing"].items():
        sizing.add_row(
            name,
            f"{t['return_pct']:.2f}",
            f"{t['sharpe']:.2f}",
            f"{t['max_drawdown_pct']:.2f}",
            f"{t['turnover']:.2f}",
            f"{t['fees_pct']:.2f}",
            str(t["trades"]),
        )
    out.print(sizing)
    out.print(f"ECE of the p that reaches Kelly: {result['calibration']['ece_final']:.4f}")
    out.print(f"verdict: {result['verdict'].sentence()}")
    out.print(f"report: {path}")


@models_app.command("list")
def models_list(
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Registered model versions, newest first."""
    from bot.ledger.model_versions import list_versions, test_accuracy

    try:
        settings = _settings(config, data_dir=data_dir, database__url=db)
        rows = _with_db(settings, list_versions)
    except StackbotError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2, default=str))
        return
    listed = []
    for r in rows:
        acc = test_accuracy(r.metrics)
        listed.append({"id": r.id, "architecture": r.architecture, "status": r.status,
                       "symbols": ",".join(r.symbols), "train end": str(r.train_end)[:16],
                       "test acc": f"{acc:.3f}" if acc is not None else ""})
    table = whole_ids_table("model versions", listed)
    out.print(table)


@models_app.command("promote")
def models_promote(
    ensemble_id: Annotated[str, typer.Argument(help="an ensemble id")],
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Make an ensemble the active one (the previous one is retired)."""
    from bot.ledger.model_versions import promote

    try:
        settings = _settings(config, data_dir=data_dir, database__url=db)
        _with_db(settings, lambda engine: promote(engine, ensemble_id, reason="operator"))
    except StackbotError as exc:
        raise _fail(exc) from None
    out.print(f"{ensemble_id} is now the active ensemble")
