"""``stackbot serve`` (the operator console) and ``stackbot web hash-password``."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from bot.cli_common import (
    AccountOpt,
    ConfigOpt,
    DataDirOpt,
    DbOpt,
    ExchangeOpt,
    InstanceOpt,
    ModeOpt,
    out,
)
from bot.cli_common import fail as _fail
from bot.cli_common import load as _settings
from bot.errors import StackbotError

web_app = typer.Typer(no_args_is_help=True, help="The operator console.")


def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8080)")] = None,
    account: AccountOpt = None,
    mode: ModeOpt = None,
    instance: InstanceOpt = None,
    exchange: ExchangeOpt = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """The operator console: REST API (/api/v1, OpenAPI at /api/v1/openapi.json) and the
    dashboard, with the kill switch. Reads the ledger, so it works while the bot is down.
    Needs web.password_hash (STACKBOT_WEB_PASSWORD_HASH) or web.api_token."""
    import uvicorn

    from bot.app import account_name
    from bot.web.app import create_app

    try:
        settings = _settings(config, mode=mode, instance=instance, exchange__name=exchange,
                             data_dir=data_dir, database__url=db, web__host=host,
                             web__port=port)
        app = create_app(settings, account or account_name(settings))
    except StackbotError as exc:
        raise _fail(exc) from None
    uvicorn.run(app, host=settings.web.host, port=settings.web.port, log_level="warning",
                proxy_headers=False, server_header=False, date_header=False)


@web_app.command("hash-password")
def hash_password() -> None:
    """Print an argon2 hash for web.password_hash. The password is read from the terminal (or
    one line of standard input), never from the command line."""
    from bot.web.auth import hash_password as make

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise _fail(ValueError("the two passwords differ"))
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        raise _fail(ValueError("the password must have at least 8 characters"))
    out.print(make(password), soft_wrap=True)


def healthcheck(
    max_age: Annotated[float, typer.Option(help="seconds since the engine's last commit")] = 180,
    config: ConfigOpt = None,
) -> None:
    """The container's healthcheck: exit 0 when the running bot's heartbeat (its metrics
    endpoint, metrics.host:metrics.port) is younger than --max-age seconds, else 1."""
    import time
    import urllib.request

    try:
        settings = _settings(config)
    except StackbotError as exc:
        raise _fail(exc) from None
    host = "127.0.0.1" if settings.metrics.host in ("0.0.0.0", "::") else settings.metrics.host
    url = f"http://{host}:{settings.metrics.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError as exc:
        typer.echo(f"unhealthy: no metrics at {url} ({exc})", err=True)
        raise typer.Exit(1) from None
    beats = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith("stackbot_heartbeat_timestamp_seconds{")]
    age = time.time() - max(beats) if beats else float("inf")
    if age > max_age:
        typer.echo(f"unhealthy: the engine's last commit was {age:.0f} s ago", err=True)
        raise typer.Exit(1)
    typer.echo(f"healthy: last commit {age:.1f} s ago")
