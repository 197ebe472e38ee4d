"""What every ``stackbot`` command shares: the console, the common options, settings with the
flags on top (and every secret registered for masking), the database, and the error exit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bot.config import Settings, load_settings
from bot.logs import configure_logging

out = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file")]
DbOpt = Annotated[str | None, typer.Option("--db", help="postgresql://user@host:port/db")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="state directory")]
# which account an operator command or the console is for
AccountOpt = Annotated[str | None, typer.Option(help="account (default instance:mode:exchange)")]
ModeOpt = Annotated[str | None, typer.Option(help="paper or live")]
InstanceOpt = Annotated[str | None, typer.Option()]
ExchangeOpt = Annotated[str | None, typer.Option()]


def load(config: Path | None, **flags: Any) -> Settings:
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
    return settings


def with_db(settings: Settings, work: Any) -> Any:
    """Open the configured (or embedded) database, bring its schema up to date (as the owner,
    where this process has the owner's URL), then ``await work(engine)`` as the service's
    login and close it."""
    from bot.app import database_logins_of
    from bot.ledger.logins import prepare
    from bot.ledger.repository import make_engine

    async def go() -> Any:
        logins = database_logins_of(settings)
        await prepare(logins)
        engine = make_engine(logins.service)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def fail(exc: BaseException) -> typer.Exit:
    from bot.errors import FatalExchangeError
    from bot.logs import scrub

    text = scrub(" ".join(str(exc).split()))  # one line, whatever the venue or driver sent
    if isinstance(exc, FatalExchangeError):
        text = f"{text} -- to fix: {exc.fix}"
    typer.echo(f"error: {text}", err=True)
    return typer.Exit(2)


def whole_ids_table(title: str, rows: list[dict[str, Any]]) -> Table:
    """A table whose ids (runs, accounts, orders) are never cut, at any terminal width: they
    are what an operator copies into the next command. Other columns fold instead."""
    table = Table(title=title)
    if not rows:
        table.add_column("(none)")
        return table
    for col in rows[0]:
        if col == "account" or col == "id" or col.endswith("_id"):
            table.add_column(col, no_wrap=True,
                             min_width=max(len(str(r.get(col, ""))) for r in rows))
        else:
            table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    return table
