"""The ``stackbot`` command line (typer)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from bot.config import Settings, load_settings
from bot.errors import StackbotError
from bot.feeds.files import parse_timestamp
from bot.logs import configure_logging, get_logger, register_secrets

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="stackbot: a crypto trading bot. Backtest, paper and live on one engine.")
db_app = typer.Typer(no_args_is_help=True, help="Database commands.")
config_app = typer.Typer(no_args_is_help=True, help="Configuration commands.")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
out = Console()
err = Console(stderr=True)
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
    register_secrets([s.get_secret_value() for s in (settings.exchange.api_key,
                                                      settings.exchange.secret,
                                                      settings.database.url) if s is not None])
    return settings


def _fail(exc: BaseException) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    return typer.Exit(2)


def _run_async(coro_factory: Any, stop_grace_s: float = 5.0) -> Any:
    """Run a coroutine with SIGINT/SIGTERM mapped to a graceful stop of the engine."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        engines: list[Any] = []
        task = asyncio.current_task()

        def on_signal(signame: str) -> None:
            log.warning("signal", signal=signame, action="graceful stop")
            for eng in engines:
                eng.request_stop()
            if not engines and task is not None:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig.name)
        return await coro_factory(engines.append)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise typer.Exit(130) from None


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
    config: ConfigOpt = None, db: DbOpt = None, data_dir: DataDirOpt = None,
) -> None:
    """Replay candle files through the engine with the paper broker; every row to the ledger."""
    from bot import app as application

    try:
        settings = _settings(config, timeframe=timeframe, data_dir=data_dir, database__url=db,
                             mode="backtest")
        syms = [s.strip().upper() for s in symbols.split(",")] if symbols else None
        outcome = _run_async(lambda hook: application.backtest(
            settings, data, syms, _ts(start), _ts(end), hook))
    except StackbotError as exc:
        raise _fail(exc) from None
    _print_summary(outcome.summary, as_json)


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
