"""What every ``stackbot`` command shares: the console, the common options, settings with the
flags on top (and every secret registered for masking), the database, and the error exit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from bot.config import Settings, load_settings
from bot.logs import configure_logging, password_of, register_secrets

out = Console()

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config file")]
DbOpt = Annotated[Optional[str], typer.Option("--db", help="postgresql://user@host:port/db")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="state directory")]


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
    register_secrets([s.get_secret_value() for s in (
        settings.exchange.api_key, settings.exchange.secret, settings.database.url,
        settings.mqtt.password, settings.mqtt.command_secret) if s is not None])
    # the password on its own too: a driver error may quote it without the rest of the URL
    register_secrets([password_of(settings.database.url.get_secret_value())
                      if settings.database.url is not None else None])
    return settings


def with_db(settings: Settings, work: Any) -> Any:
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


def fail(exc: BaseException) -> typer.Exit:
    from bot.errors import FatalExchangeError

    text = " ".join(str(exc).split())  # one line, whatever the venue sent
    if isinstance(exc, FatalExchangeError):
        text = f"{text} -- to fix: {exc.fix}"
    typer.echo(f"error: {text}", err=True)
    return typer.Exit(2)


