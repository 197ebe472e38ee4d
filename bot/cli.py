"""The ``stackbot`` command line (typer)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from bot.cli_sim import sim_exchange
from bot.config import Settings, load_settings
from bot.errors import StackbotError
from bot.feeds.files import parse_timestamp
from bot.logs import configure_logging, get_logger, password_of, register_secrets

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="stackbot: a crypto trading bot. Backtest, paper and live on one engine.")
db_app = typer.Typer(no_args_is_help=True, help="Database commands.")
models_app = typer.Typer(no_args_is_help=True, help="The model registry.")
audit_app = typer.Typer(no_args_is_help=True, help="The audit trail.")
config_app = typer.Typer(no_args_is_help=True, help="Configuration commands.")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
app.add_typer(audit_app, name="audit")
out = Console()
log = get_logger("cli")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config file")]
DbOpt = Annotated[Optional[str], typer.Option("--db", help="postgresql://user@host:port/db")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="state directory")]


def _settings(config: Path | None, **flags: Any) -> Settings:
    """Load settings with CLI flags on top; nested flags use 'section.key' names."""
    overrides: dict[str, Any] = {}
    for key, value in flags.items():
        if value is None:
            continue
        section, _, sub = key.partition("__")
        if sub:
            overrides.setdefault(section, {})[sub] = value
        else:
            overrides[key] = value
    settings = load_settings(config, overrides)
    configure_logging(settings.log_level, settings.log_format)
    register_secrets([s.get_secret_value() for s in (
        settings.exchange.api_key, settings.exchange.secret, settings.database.url,
        settings.mqtt.password, settings.mqtt.command_secret) if s is not None])
    # the password on its own too: a driver error may quote it without the rest of the URL
    register_secrets([password_of(settings.database.url.get_secret_value())
                      if settings.database.url is not None else None])
    return settings


def _with_db(settings: Settings, work: Any) -> Any:
    """Open the configured (or embedded) database, bring its schema up to date, then
    ``await work(engine)`` and close it."""
    from bot.app import database_url
    from bot.ledger.migrate import upgrade
    from bot.ledger.repository import make_engine

    async def go() -> Any:
        engine = make_engine(database_url(settings))
        try:
            await upgrade(engine)
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _fail(exc: BaseException) -> typer.Exit:
    from bot.errors import FatalExchangeError

    text = " ".join(str(exc).split())  # one line, whatever the venue sent
    if isinstance(exc, FatalExchangeError):
        text = f"{text} -- to fix: {exc.fix}"
    typer.echo(f"error: {text}", err=True)
    return typer.Exit(2)


def _run_async(coro_factory: Any, kill_level: str = "none") -> Any:
    """Run a coroutine with SIGINT/SIGTERM mapped to the configured kill level (if any) and
    a graceful stop of the engine."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        engines: list[Any] = []
        task = asyncio.current_task()

        def on_signal(signame: str) -> None:
            from bot.control import on_signal as converge

            log.warning("signal", signal=signame, action="graceful stop", kill_level=kill_level)
            for eng in engines:
                converge(eng, kill_level, signame)
            if not engines and task is not None:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig.name)
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)  # what is it waiting for?
        return await coro_factory(engines.append)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise typer.Exit(130) from None


def _dump_tasks() -> None:
    for t in asyncio.all_tasks():
        print(f"--- task {t.get_name()}: {t.get_coro()}", file=sys.stderr)
        t.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


def _ts(text: str | None) -> int | None:
    return parse_timestamp(text) if text else None


@app.command()
def backtest(
    data: Annotated[list[Path], typer.Option("--data", help="candle file (csv, json, feather); repeat for more")],
    timeframe: Annotated[str, typer.Option("--timeframe", "-t")] = "1h",
    symbols: Annotated[Optional[str], typer.Option(help="comma list, one per --data in order")] = None,
    start: Annotated[Optional[str], typer.Option(help="first candle (ISO-8601 or ms)")] = None,
    end: Annotated[Optional[str], typer.Option(help="stop before this candle")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    strategy: Annotated[Optional[str], typer.Option(help="baseline or ensemble (the active models)")] = None,
    config: ConfigOpt = None, db: DbOpt = None, data_dir: DataDirOpt = None,
) -> None:
    """Replay candle files through the engine with the paper broker; every row to the ledger."""
    from bot import app as application

    try:
        settings = _settings(config, timeframe=timeframe, data_dir=data_dir, database__url=db,
                             mode="backtest", strategy__name=strategy)
        syms = [s.strip().upper() for s in symbols.split(",")] if symbols else None
        outcome = _run_async(lambda hook: application.backtest(
            settings, data, syms, _ts(start), _ts(end), hook))
    except StackbotError as exc:
        raise _fail(exc) from None
    _print_summary(outcome.summary, as_json)


@app.command()
def run(
    mode: Annotated[str, typer.Option(help="paper or live")] = "paper",
    exchange: Annotated[Optional[str], typer.Option(help="ccxt exchange id")] = None,
    symbols: Annotated[Optional[str], typer.Option(help="comma list, e.g. BTC/USDT,ETH/USDT")] = None,
    timeframe: Annotated[Optional[str], typer.Option("--timeframe", "-t")] = None,
    exchange_url: Annotated[Optional[str], typer.Option(help="REST base URL (testnet, simulator)")] = None,
    feed: Annotated[Optional[str], typer.Option(help="auto, ws or rest")] = None,
    poll_interval: Annotated[Optional[float], typer.Option(help="REST poll seconds")] = None,
    max_candles: Annotated[Optional[int], typer.Option(help="stop cleanly after N closed candles")] = None,
    sandbox: Annotated[Optional[bool], typer.Option("--sandbox/--no-sandbox", help="ccxt sandbox mode")] = None,
    confirm_live: Annotated[Optional[bool], typer.Option("--confirm-live", help="required for live")] = None,
    instance: Annotated[Optional[str], typer.Option(help="instance name")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="baseline or ensemble")] = None,
    config: ConfigOpt = None, db: DbOpt = None, data_dir: DataDirOpt = None,
) -> None:
    """Trade on live market data: paper (simulated fills) or live (real orders)."""
    from bot import app as application

    if mode not in ("paper", "live"):
        raise _fail(ValueError(f"--mode must be paper or live, not {mode!r}"))
    try:
        settings = _settings(
            config, mode=mode, symbols=symbols, timeframe=timeframe, max_candles=max_candles,
            confirm_live=confirm_live, instance=instance, data_dir=data_dir, database__url=db,
            exchange__name=exchange, exchange__url=exchange_url, exchange__feed=feed,
            exchange__poll_interval=poll_interval, exchange__sandbox=sandbox,
            strategy__name=strategy)
        outcome = _run_async(lambda hook: application.trade(settings, hook),
                             settings.risk.kill_on_signal)
    except StackbotError as exc:
        raise _fail(exc) from None
    _print_summary(outcome.summary, as_json=False)


@app.command()
def download(
    exchange: Annotated[str, typer.Option(help="ccxt exchange id")] = "binance",
    symbols: Annotated[str, typer.Option(help="comma list")] = "BTC/USDT",
    timeframe: Annotated[str, typer.Option("--timeframe", "-t")] = "1h",
    since: Annotated[str, typer.Option(help="first candle, ISO-8601 or ms")] = "2024-01-01",
    until: Annotated[Optional[str], typer.Option(help="stop before this time (default: now)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="output directory")] = Path("data"),
    exchange_url: Annotated[Optional[str], typer.Option(help="REST base URL override")] = None,
    config: ConfigOpt = None,
) -> None:
    """Download closed candles to CSV, resumable (appends after the last row on disk)."""
    from bot.feeds.download import download_all

    try:
        settings = _settings(config, exchange__name=exchange, exchange__url=exchange_url,
                             symbols=symbols, timeframe=timeframe)
        paths = asyncio.run(download_all(settings, _ts(since) or 0, _ts(until), out_dir))
    except StackbotError as exc:
        raise _fail(exc) from None
    for sym, (path, added) in paths.items():
        out.print(f"{sym}: {added} new candles -> {path}")


@app.command()
def status(config: ConfigOpt = None, db: DbOpt = None, data_dir: DataDirOpt = None,
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Runs, accounts, open positions and working orders, read from the ledger."""
    from bot.status import read_status

    try:
        settings = _settings(config, data_dir=data_dir, database__url=db)
        report = asyncio.run(read_status(settings))
    except StackbotError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    for title, rows in report.items():
        table = Table(title=title)
        if rows:
            for col in rows[0]:
                table.add_column(col)
            for row in rows:
                table.add_row(*(str(v) for v in row.values()))
        else:
            table.add_column("(none)")
        out.print(table)


def _operator(explicit: str | None) -> str:
    import getpass

    return explicit or getpass.getuser()


def _control(action: str, level: str | None, reason: str, operator: str | None,
             account: str | None, mode: str | None, instance: str | None,
             exchange: str | None, config: Path | None, db: str | None,
             data_dir: Path | None) -> None:
    from bot.app import account_name
    from bot.ledger.control import request_control

    settings = _settings(config, mode=mode, instance=instance, exchange__name=exchange,
                         data_dir=data_dir, database__url=db)
    target = account or account_name(settings)
    state = _with_db(settings, lambda engine: request_control(
        engine, target, action, reason, _operator(operator), level))
    out.print(f"{target}: {state['state']} ({state['reason']}); request {state['request_id']} "
              "recorded, a running instance carries it out now, a stopped one at its next start")


@app.command()
def kill(
    reason: Annotated[str, typer.Option(help="why: goes to the audit trail")],
    level: Annotated[str, typer.Option(help="pause | cancel | flatten")] = "pause",
    operator: Annotated[Optional[str], typer.Option(help="who (default: OS user)")] = None,
    account: Annotated[Optional[str], typer.Option(help="account (default instance:mode:exchange)")] = None,
    mode: Annotated[Optional[str], typer.Option(help="paper or live")] = None,
    instance: Annotated[Optional[str], typer.Option()] = None,
    exchange: Annotated[Optional[str], typer.Option()] = None,
    config: ConfigOpt = None, db: DbOpt = None, data_dir: DataDirOpt = None,
) -> None:
    """Kill switch: HALT trading (pause), also cancel open orders (cancel), also close
    positions (flatten). Latches until `stackbot resume`. Works through the database."""
    if level not in ("pause", "cancel", "flatten"):
        raise _fail(ValueError(f"--level must be pause, cancel or flatten, not {level!r}"))
    try:
        _control("kill", level, reason, operator, account, mode, instance, exchange, config,
                 db, data_dir)
    except StackbotError as exc:
        raise _fail(exc) from None


@app.command()
def resume(
    reason: Annotated[str, typer.Option(help="why: goes to the audit trail")],
    operator: Annotated[Optional[str], typer.Option(help="who (default: OS user)")] = None,
    account: Annotated[Optional[str], typer.Option()] = None,
    mode: Annotated[Optional[str], typer.Option(help="paper or live")] = None,
    instance: Annotated[Optional[str], typer.Option()] = None,
    exchange: Annotated[Optional[str], typer.Option()] = None,
    config: ConfigOpt = None, db: DbOpt = None, data_dir: DataDirOpt = None,
) -> None:
    """Leave HALTED (or an open-ended REDUCING): back to ACTIVE, with who and why recorded."""
    try:
        _control("resume", None, reason, operator, account, mode, instance, exchange, config,
                 db, data_dir)
    except StackbotError as exc:
        raise _fail(exc) from None


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, db: DbOpt = None, data_dir: DataDirOpt = None) -> None:
    """Apply the ledger migrations (idempotent)."""
    from bot.ledger.migrate import current_revision

    try:
        settings = _settings(config, data_dir=data_dir, database__url=db)
        rev = _with_db(settings, current_revision)
    except StackbotError as exc:
        raise _fail(exc) from None
    except Exception as exc:  # connection refused and friends: say it plainly
        raise _fail(RuntimeError(f"cannot upgrade the database: {exc}")) from None
    out.print(f"database at revision {rev}")


app.command("sim-exchange")(sim_exchange)


@audit_app.command("verify")
def audit_verify(
    config: ConfigOpt = None, db: DbOpt = None, data_dir: DataDirOpt = None,
    anchors: Annotated[Optional[Path], typer.Option(
        "--anchors", help="anchors file (data_dir/audit-anchors.jsonl): the chain must pass "
        "through every anchored link")] = None,
) -> None:
    """Walk the audit hash chain; exit 1 and name the first broken link if it is broken."""
    from bot.ledger.audit import read_anchors, verify_chain

    try:
        settings = _settings(config, data_dir=data_dir, database__url=db)
        pinned = read_anchors(anchors) if anchors is not None else []
        report = _with_db(settings, lambda engine: verify_chain(engine, pinned))
    except StackbotError as exc:
        raise _fail(exc) from None
    out.print(report.describe())
    if not report.ok:
        raise typer.Exit(1)


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective configuration (file < environment < flags), secrets masked."""
    try:
        settings = _settings(config)
    except StackbotError as exc:
        raise _fail(exc) from None
    print(json.dumps(settings.redacted(), indent=2))


@app.command()
def train(
    data: Annotated[list[Path], typer.Option("--data", help="candle file; repeat per symbol")],
    timeframe: Annotated[str, typer.Option("--timeframe", "-t")] = "1h",
    symbols: Annotated[Optional[str], typer.Option(help="comma list, one per --data")] = None,
    preset: Annotated[str, typer.Option(help="tiny, quick or full (see the README)")] = "quick",
    models: Annotated[Optional[str], typer.Option(help="members to train (default: all)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    promote_mode: Annotated[str, typer.Option("--promote", help="always, if-none, if-better or never")] = "if-none",
    seed: Annotated[Optional[int], typer.Option(help="override the preset's seed")] = None,
    config: ConfigOpt = None, db: DbOpt = None, data_dir: DataDirOpt = None,
) -> None:
    """Walk-forward training of the model ensemble; checkpoints are registered as candidates."""
    from bot.app import load_series
    from models.cli_support import barrier_from, members_from, run_training, store
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
        result = run_training(series, timeframe, preset, names, device,
                              barrier_from(settings.risk), seed)
        elapsed = time.perf_counter() - t0

        ens_id, directory, promoted, why = _with_db(settings, lambda engine: store(
            engine, result, settings.home / "models", timeframe, promote_mode, series))
    except (StackbotError, ValueError) as exc:
        raise _fail(exc) from None
    table = Table(title=f"ensemble {ens_id} (trained in {elapsed:.0f}s)")
    for col in ("member", "test acc", "test log-loss", "Brier raw->cal", "ECE raw->cal", "s/epoch"):
        table.add_column(col)
    for m in result.members:
        raw, cal = m.metrics["test_raw"], m.metrics["test_calibrated"]
        table.add_row(m.name, f"{cal['accuracy']:.3f}", f"{cal['log_loss']:.4f}",
                      f"{raw['brier']:.4f}->{cal['brier']:.4f}", f"{raw['ece']:.4f}->{cal['ece']:.4f}",
                      f"{m.metrics['seconds_per_epoch']:.2f}")
    meta = result.meta_metrics["test"]
    table.add_row("meta (ensemble)", f"{meta['accuracy']:.3f}", f"{meta['log_loss']:.4f}",
                  f"{meta['brier']:.4f}", f"{meta['ece']:.4f}", "")
    out.print(table)
    bar, shares = result.meta_metrics["barrier"], result.meta_metrics["labels"]["train"]
    out.print(f"trained for: target {bar['k_target']:g} ATR before stop {bar['k_stop']:g} ATR "
              f"within {bar['horizon']} candles; train outcomes: target first "
              f"{shares['target_first']:.1%}, stop first {shares['stop_first']:.1%}, timeout "
              f"{shares['timeout']:.1%} (timeouts excluded from the target)")
    out.print(f"checkpoints: {directory}")
    out.print(f"{'promoted to active' if promoted else 'registered as candidate'} ({why})")


@app.command()
def evaluate(
    data: Annotated[list[Path], typer.Option("--data", help="candle file; repeat per symbol")],
    out_dir: Annotated[Path, typer.Option("--out", help="report directory")],
    timeframe: Annotated[str, typer.Option("--timeframe", "-t")] = "1h",
    symbols: Annotated[Optional[str], typer.Option(help="comma list, one per --data")] = None,
    preset: Annotated[str, typer.Option(help="tiny, quick or full (see the README)")] = "quick",
    models: Annotated[Optional[str], typer.Option(help="members (default: all)")] = None,
    folds: Annotated[int, typer.Option(help="walk-forward folds; their test parts tile the file after the first training span")] = 2,
    config: ConfigOpt = None, db: DbOpt = None, data_dir: DataDirOpt = None,
) -> None:
    """Walk-forward out-of-sample report: members, ensemble and baselines; Markdown + PNG."""
    from models.evaluate_run import run_evaluation

    try:
        settings = _settings(config, timeframe=timeframe, data_dir=data_dir, database__url=db,
                             mode="backtest")
        syms = [x.strip().upper() for x in symbols.split(",")] if symbols else None
        path, result = asyncio.run(run_evaluation(settings, data, syms, out_dir, preset,
                                                  models, folds, out.print))
    except (StackbotError, ValueError) as exc:
        raise _fail(exc) from None
    table = Table(title="out of sample: P(target before stop)")
    for col in ("predictor", "accuracy", "log-loss", "Brier", "ECE", "return %", "Sharpe"):
        table.add_column(col)
    for name, m in result["predictors"].items():
        table.add_row(name, f"{m['accuracy']:.4f}", f"{m['log_loss']:.4f}", f"{m['brier']:.4f}",
                      f"{m['ece']:.4f}", f"{m.get('return_pct', float('nan')):.2f}",
                      f"{m.get('sharpe', float('nan')):.2f}")
    out.print(table)
    sizing = Table(title="sizing on the ensemble's p")
    for col in ("rule", "return %", "Sharpe", "max DD %", "turnover", "fees %", "trades"):
        sizing.add_column(col)
    for name, t in result["sizing"].items():
        sizing.add_row(name, f"{t['return_pct']:.2f}", f"{t['sharpe']:.2f}",
                       f"{t['max_drawdown_pct']:.2f}", f"{t['turnover']:.2f}",
                       f"{t['fees_pct']:.2f}", str(t["trades"]))
    out.print(sizing)
    out.print(f"ECE of the p that reaches Kelly: {result['calibration']['ece_final']:.4f}")
    out.print(f"verdict: {result['verdict'].sentence()}")
    out.print(f"report: {path}")


@models_app.command("list")
def models_list(config: ConfigOpt = None, db: DbOpt = None, data_dir: DataDirOpt = None,
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Registered model versions, newest first."""
    from models.registry import list_versions

    try:
        settings = _settings(config, data_dir=data_dir, database__url=db)
        rows = _with_db(settings, list_versions)
    except StackbotError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title="model versions")
    for col in ("id", "architecture", "status", "symbols", "train end", "test acc"):
        table.add_column(col)
    for r in rows:
        m = r["metrics"] or {}
        acc = (m.get("test_calibrated") or m.get("test") or {}).get("accuracy")
        table.add_row(r["id"], r["architecture"], r["status"], ",".join(r["symbols"]),
                      str(r["train_end"])[:16], f"{acc:.3f}" if acc is not None else "")
    out.print(table)


@models_app.command("promote")
def models_promote(ensemble_id: Annotated[str, typer.Argument(help="an ensemble id")],
                   config: ConfigOpt = None, db: DbOpt = None, data_dir: DataDirOpt = None) -> None:
    """Make an ensemble the active one (the previous one is retired)."""
    from models.registry import promote

    try:
        settings = _settings(config, data_dir=data_dir, database__url=db)
        _with_db(settings, lambda engine: promote(engine, ensemble_id, reason="operator"))
    except StackbotError as exc:
        raise _fail(exc) from None
    out.print(f"{ensemble_id} is now the active ensemble")


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    table = Table(title=f"run {summary.get('run_id')}", show_header=False)
    for key, value in summary.items():
        table.add_row(key, str(value))
    out.print(table)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
