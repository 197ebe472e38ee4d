"""The ``stackbot`` command line (typer)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bot.cli_common import (
    AccountOpt,
    ConfigOpt,
    DataDirOpt,
    DbOpt,
    ExchangeOpt,
    InstanceOpt,
    ModeOpt,
    out,
    whole_ids_table,
)
from bot.cli_common import fail as _fail
from bot.cli_common import load as _settings
from bot.cli_common import with_db as _with_db
from bot.cli_models import evaluate, models_app, train
from bot.cli_sim import sim_exchange
from bot.cli_web import healthcheck, serve, web_app
from bot.errors import ConfigError, StackbotError
from bot.feeds.files import parse_timestamp
from bot.logs import get_logger

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="stackbot: a crypto trading bot. Backtest, paper and live on one engine.")
db_app = typer.Typer(no_args_is_help=True, help="Database commands.")
audit_app = typer.Typer(no_args_is_help=True, help="The audit trail.")
config_app = typer.Typer(no_args_is_help=True, help="Configuration commands.")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
app.command()(train)
app.command()(evaluate)
app.add_typer(audit_app, name="audit")
app.add_typer(web_app, name="web")
app.command()(serve)
app.command()(healthcheck)
log = get_logger("cli")


def _run_async(coro_factory: Any, kill_level: str = "none") -> Any:
    """Run a coroutine with SIGINT/SIGTERM mapped to the configured kill level (if any) and
    a graceful stop of the engine."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        engines: list[Any] = []
        task = asyncio.current_task()

        def on_signal(signame: str) -> None:
            from bot.command_gate import on_signal as converge

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
    data: Annotated[
        list[Path], typer.Option("--data", help="candle file (csv, json, feather); repeat for more")
    ],
    timeframe: Annotated[str, typer.Option("--timeframe", "-t")] = "1h",
    symbols: Annotated[str | None, typer.Option(help="comma list, one per --data in order")] = None,
    start: Annotated[str | None, typer.Option(help="first candle (ISO-8601 or ms)")] = None,
    end: Annotated[str | None, typer.Option(help="stop before this candle")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    strategy: Annotated[
        str | None, typer.Option(help="baseline or ensemble (the active models)")
    ] = None,
    mark: Annotated[list[Path] | None, typer.Option(
        "--mark", help="perpetuals: mark-price candles, one per --data in order (default: the "
        "*-mark file beside the candles)")] = None,
    funding: Annotated[list[Path] | None, typer.Option(
        "--funding", help="perpetuals: funding rates, one per --data in order (default: the "
        "*-funding_rate file beside the candles)")] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Replay candle files through the engine with the paper broker; every row to the ledger.
    Perpetuals (``BTC/USDT:USDT``) trade both sides on margin, with funding and
    liquidation."""
    from bot import app as application

    try:
        settings = _settings(
            config,
            timeframe=timeframe,
            data_dir=data_dir,
            database__url=db,
            mode="backtest",
            strategy__name=strategy,
        )
        syms = [s.strip().upper() for s in symbols.split(",")] if symbols else None
        outcome = _run_async(
            lambda hook: application.backtest(settings, data, syms, _ts(start), _ts(end), hook,
                                              marks=mark, funding=funding)
        )
    except StackbotError as exc:
        raise _fail(exc) from None
    _print_summary(outcome.summary, as_json)


@app.command()
def run(
    mode: Annotated[str, typer.Option(help="paper or live")] = "paper",
    exchange: Annotated[str | None, typer.Option(help="ccxt exchange id")] = None,
    symbols: Annotated[str | None, typer.Option(help="comma list, e.g. BTC/USDT,ETH/USDT")] = None,
    timeframe: Annotated[str | None, typer.Option("--timeframe", "-t")] = None,
    exchange_url: Annotated[
        str | None, typer.Option(help="REST base URL (testnet, simulator)")
    ] = None,
    feed: Annotated[str | None, typer.Option(help="auto, ws or rest")] = None,
    poll_interval: Annotated[float | None, typer.Option(help="REST poll seconds")] = None,
    max_candles: Annotated[
        int | None, typer.Option(help="stop cleanly after N closed candles")
    ] = None,
    sandbox: Annotated[
        bool | None, typer.Option("--sandbox/--no-sandbox", help="ccxt sandbox mode")
    ] = None,
    confirm_live: Annotated[
        bool | None, typer.Option("--confirm-live", help="required for live")
    ] = None,
    instance: Annotated[str | None, typer.Option(help="instance name")] = None,
    strategy: Annotated[str | None, typer.Option(help="baseline or ensemble")] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Trade on live market data: paper (simulated fills) or live (real orders)."""
    from bot import app as application

    if mode not in ("paper", "live"):
        raise _fail(ValueError(f"--mode must be paper or live, not {mode!r}"))
    try:
        settings = _settings(
            config,
            mode=mode,
            symbols=symbols,
            timeframe=timeframe,
            max_candles=max_candles,
            confirm_live=confirm_live,
            instance=instance,
            data_dir=data_dir,
            database__url=db,
            exchange__name=exchange,
            exchange__url=exchange_url,
            exchange__feed=feed,
            exchange__poll_interval=poll_interval,
            exchange__sandbox=sandbox,
            strategy__name=strategy,
        )
        outcome = _run_async(
            lambda hook: application.trade(settings, hook), settings.risk.kill_on_signal
        )
    except StackbotError as exc:
        raise _fail(exc) from None
    _print_summary(outcome.summary, as_json=False)


@app.command()
def download(
    exchange: Annotated[str, typer.Option(help="ccxt exchange id")] = "binance",
    symbols: Annotated[str, typer.Option(help="comma list")] = "BTC/USDT",
    timeframe: Annotated[str, typer.Option("--timeframe", "-t")] = "1h",
    since: Annotated[str, typer.Option(help="first candle, ISO-8601 or ms")] = "2024-01-01",
    until: Annotated[str | None, typer.Option(help="stop before this time (default: now)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="output directory")] = Path("data"),
    exchange_url: Annotated[str | None, typer.Option(help="REST base URL override")] = None,
    config: ConfigOpt = None,
) -> None:
    """Download closed candles to CSV, resumable (appends after the last row on disk)."""
    from bot.feeds.download import download_all

    try:
        settings = _settings(
            config,
            exchange__name=exchange,
            exchange__url=exchange_url,
            symbols=symbols,
            timeframe=timeframe,
        )
        paths = asyncio.run(download_all(settings, _ts(since) or 0, _ts(until), out_dir))
    except StackbotError as exc:
        raise _fail(exc) from None
    for sym, (path, added) in paths.items():
        out.print(f"{sym}: {added} new candles -> {path}")


@app.command()
def status(
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
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
        out.print(whole_ids_table(title, rows))


@app.command()
def runs(
    limit: Annotated[int, typer.Option("--limit", min=1, help="newest first")] = 20,
    mode: Annotated[str | None, typer.Option("--mode", help="backtest, paper or live")] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Runs and their results, read from the ledger; ids are shown whole at any width."""
    from bot.status import read_runs

    if mode is not None and mode not in ("backtest", "paper", "live"):
        raise _fail(ValueError(f"--mode {mode!r}: expected backtest, paper or live"))
    try:
        settings = _settings(config, data_dir=data_dir, database__url=db)
        rows = asyncio.run(read_runs(settings, limit, mode))
    except StackbotError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    out.print(whole_ids_table("runs", rows))


def _operator(explicit: str | None) -> str:
    import getpass

    return explicit or getpass.getuser()


def _control(
    action: str,
    level: str | None,
    reason: str,
    operator: str | None,
    account: str | None,
    mode: str | None,
    instance: str | None,
    exchange: str | None,
    config: Path | None,
    db: str | None,
    data_dir: Path | None,
) -> None:
    from bot.app import account_name
    from bot.ledger.control_requests import request_control
    from risk.state import operator_command

    who = _operator(operator)
    settings = _settings(
        config,
        mode=mode,
        instance=instance,
        exchange__name=exchange,
        data_dir=data_dir,
        database__url=db,
    )
    target = account or account_name(settings)
    state = _with_db(
        settings,
        lambda engine: request_control(
            engine, target, action, reason, who, level,
            lambda stored, ts: operator_command(stored, action, reason, who, level, ts)),
    )
    out.print(
        f"{target}: {state['state']} ({state['reason']}); request {state['request_id']} "
        "recorded, a running instance carries it out now, a stopped one at its next start"
    )


@app.command()
def kill(
    reason: Annotated[str, typer.Option(help="why: goes to the audit trail")],
    level: Annotated[str, typer.Option(help="pause | cancel | flatten")] = "pause",
    operator: Annotated[str | None, typer.Option(help="who (default: OS user)")] = None,
    account: AccountOpt = None,
    mode: ModeOpt = None,
    instance: InstanceOpt = None,
    exchange: ExchangeOpt = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Kill switch: HALT trading (pause), also cancel open orders (cancel), also close
    positions (flatten). Latches until `stackbot resume`. Works through the database."""
    if level not in ("pause", "cancel", "flatten"):
        raise _fail(ValueError(f"--level must be pause, cancel or flatten, not {level!r}"))
    try:
        _control(
            "kill", level, reason, operator, account, mode, instance, exchange, config, db, data_dir
        )
    except StackbotError as exc:
        raise _fail(exc) from None


@app.command()
def resume(
    reason: Annotated[str, typer.Option(help="why: goes to the audit trail")],
    operator: Annotated[str | None, typer.Option(help="who (default: OS user)")] = None,
    account: AccountOpt = None,
    mode: ModeOpt = None,
    instance: InstanceOpt = None,
    exchange: ExchangeOpt = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Leave HALTED (or an open-ended REDUCING): back to ACTIVE, with who and why recorded."""
    try:
        _control(
            "resume",
            None,
            reason,
            operator,
            account,
            mode,
            instance,
            exchange,
            config,
            db,
            data_dir,
        )
    except StackbotError as exc:
        raise _fail(exc) from None


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, db: DbOpt = None, data_dir: DataDirOpt = None) -> None:
    """Apply the ledger migrations as the schema owner and create or update the service's
    login (idempotent). The owner is database.migrate_url (STACKBOT_DATABASE_MIGRATE_URL),
    or database.url where no migrate_url is given and it does not name the login."""
    from bot.app import database_logins_of
    from bot.ledger.migrate import current_revision

    try:
        settings = _settings(config, data_dir=data_dir, database__url=db)
        logins = database_logins_of(settings)
        if logins.owner is None:
            raise ConfigError(
                f"database.url names the service login {logins.role!r}, which cannot migrate: "
                "give the owner's URL as database.migrate_url (STACKBOT_DATABASE_MIGRATE_URL)"
            )
        rev = _with_db(settings, current_revision)
    except StackbotError as exc:
        raise _fail(exc) from None
    except Exception as exc:  # connection refused and friends: say it plainly
        raise _fail(RuntimeError(f"cannot upgrade the database: {exc}")) from None
    out.print(f"database at revision {rev}; the service logs in as {logins.role!r}")


app.command("sim-exchange")(sim_exchange)


@audit_app.command("verify")
def audit_verify(
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
    anchors: Annotated[
        Path | None,
        typer.Option(
            "--anchors",
            help="anchors file (data_dir/audit-anchors.jsonl): the chain must pass "
            "through every anchored link",
        ),
    ] = None,
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
