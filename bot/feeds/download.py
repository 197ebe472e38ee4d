"""``stackbot download``: paginated ``fetch_ohlcv`` to CSV, resumable, with a progress bar.

Only closed candles are written. A re-run appends after the last timestamp already on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.progress import Progress

from bot.config import Settings
from bot.domain import Candle, timeframe_ms
from bot.errors import DataError
from bot.exchange.client import make_exchange
from bot.exchange.errors import call
from bot.feeds.files import load_candle_file, write_csv
from bot.feeds.validate import candle_problem

PAGE = 1000


def csv_path(out_dir: Path, symbol: str, timeframe: str) -> Path:
    """``BTC_USDT-1h.csv``: the name the replay feed reads the symbol and timeframe from."""
    return out_dir / f"{symbol.replace('/', '_')}-{timeframe}.csv"


def _last_ts(path: Path, timeframe: str, symbol: str) -> int | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    series = load_candle_file(path, timeframe, symbol, drop_partial=False)
    return series.candles[-1].ts


async def download_all(settings: Settings, since_ms: int, until_ms: int | None,
                       out_dir: Path) -> dict[str, tuple[Path, int]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    tf = settings.timeframe
    step = timeframe_ms(tf)
    exchange = make_exchange(settings.exchange, with_ws=False, swaps=settings.perpetuals)
    results: dict[str, tuple[Path, int]] = {}
    try:
        await call(exchange.load_markets())
        now = int(await call(exchange.fetch_time()))
        end = min(until_ms, now) if until_ms else now
        with Progress(transient=True) as progress:
            for symbol in settings.symbols:
                path = csv_path(out_dir, symbol, tf)
                last = _last_ts(path, tf, symbol)
                start = max(since_ms - since_ms % step, (last + step) if last is not None else 0)
                task = progress.add_task(symbol, total=max(1, (end - start) // step))
                added = 0
                cursor = start
                while cursor + step <= end:
                    rows = await call(exchange.fetch_ohlcv(symbol, tf, cursor, PAGE))
                    candles = []
                    for r in rows:
                        ts = int(r[0])
                        if ts < cursor or ts + step > end:
                            continue  # before the page or still forming
                        c = Candle(symbol, tf, ts, *_ohlcv(r))
                        problem = candle_problem(c)
                        if problem:
                            raise DataError(f"{exchange.id} {symbol} candle {ts}: {problem}")
                        candles.append(c)
                    if not rows:
                        break
                    if candles:
                        write_csv(path, candles, append=True)
                        added += len(candles)
                    nxt = int(rows[-1][0]) + step
                    progress.update(task, advance=max(1, (nxt - cursor) // step))
                    if nxt <= cursor:
                        break
                    cursor = nxt
                results[symbol] = (path, added)
    finally:
        await exchange.close()
    return results


def _ohlcv(row: Sequence[Any]) -> tuple[float, float, float, float, float]:
    """open, high, low, close, volume of a ccxt OHLCV row, as floats."""
    o, h, low, c, v = (float(x) for x in row[1:6])
    return o, h, low, c, v
