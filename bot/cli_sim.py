"""``stackbot sim-exchange``: the loopback Binance simulator from the command line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from bot.errors import ConfigError, StackbotError


def _fail(exc: BaseException) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


def sim_exchange(
    port: Annotated[int, typer.Option(help="loopback port")] = 8900,
    symbols: Annotated[str, typer.Option(help="comma list")] = "BTC/USDT",
    timeframe: Annotated[str, typer.Option("--timeframe", "-t")] = "1m",
    speed: Annotated[float, typer.Option(help="exchange seconds per wall second")] = 1.0,
    history: Annotated[int, typer.Option(help="candles before now")] = 500,
    seed: Annotated[int, typer.Option(help="random walk seed")] = 7,
    api_key: Annotated[str | None, typer.Option(help="enable the signed API for this key")] = None,
    secret: Annotated[str | None, typer.Option(help="HMAC secret for --api-key")] = None,
    balance: Annotated[list[str] | None, typer.Option(help="ASSET=AMOUNT, repeatable")] = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            help="KIND=RATE|every:N|window:T0-T1[@PATH][:METHOD], repeatable; see docs/faults.md"
        ),
    ] = None,
    fault_seed: Annotated[int, typer.Option(help="seed of the fault dice")] = 0,
    data: Annotated[
        list[Path] | None,
        typer.Option(
            help="replay these candle files (one symbol each) instead of synthetic candles"
        ),
    ] = None,
    websocket: Annotated[
        bool,
        typer.Option(
            "--websocket/--no-websocket", help="serve kline streams (off: REST only, 404)"
        ),
    ] = True,
) -> None:
    """Serve a simulated Binance spot and USDⓈ-M futures API on 127.0.0.1 (synthetic
    candles), with an account and injected faults when asked. Perpetuals: ``--exchange
    binanceusdm --symbols BTC/USDT:USDT`` against it."""
    from decimal import Decimal, InvalidOperation

    from bot.sim.binance import serve_forever
    from bot.sim.faults import FaultPlan, FaultSpecError

    try:
        plan = FaultPlan.from_specs(fault or [], seed=fault_seed)
        balances = {}
        for item in balance or ["USDT=10000"]:
            asset, _, amount = item.partition("=")
            balances[asset.strip().upper()] = Decimal(amount)
    except FaultSpecError as exc:
        raise _fail(exc) from None
    except InvalidOperation:
        raise _fail(ConfigError(f"--balance {item!r}: expected ASSET=AMOUNT")) from None
    if (api_key is None) != (secret is None):
        raise _fail(ConfigError("--api-key and --secret go together"))
    account = (api_key, secret, balances) if api_key and secret else None
    recorded = None
    if data:
        from bot.feeds.files import load_candle_file

        try:
            recorded = {(s := load_candle_file(f, timeframe)).symbol: s.candles for f in data}
        except StackbotError as exc:
            raise _fail(exc) from None
    asyncio.run(
        serve_forever(
            port,
            [s.strip().upper() for s in symbols.split(",")],
            timeframe,
            speed,
            history,
            seed,
            account,
            plan,
            recorded,
            websocket,
        )
    )
