"""A backtest's candle files read and validated as series before the run starts, so a bad
file writes nothing; a perpetual's with its mark-price and funding files
(``bot/feeds/perpetuals.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bot.domain import CandleSeries
from bot.errors import ConfigError
from bot.feeds.files import load_candle_file
from bot.feeds.perpetuals import companions, with_perpetual_data
from bot.logs import get_logger

log = get_logger("feed")


def load_series(files: Sequence[Path], timeframe: str,
                symbols: Sequence[str] | None, marks: Sequence[Path] | None = None,
                funding: Sequence[Path] | None = None) -> list[CandleSeries]:
    """Read and validate every file before the run starts: a bad file writes nothing. A
    perpetual (``BTC/USDT:USDT``) takes its mark-price and funding files from ``marks`` and
    ``funding`` (one per file, in order), else from beside its candles."""
    if symbols and len(symbols) != len(files):
        raise ConfigError(f"--symbols names {len(symbols)} symbols for {len(files)} files")
    for flag, given in (("--mark", marks), ("--funding", funding)):
        if given and len(given) != len(files):
            raise ConfigError(f"{flag} names {len(given)} files for {len(files)} candle files")
    series = [load_candle_file(f, timeframe, symbols[i] if symbols else None)
              for i, f in enumerate(files)]
    for i, s in enumerate(series):
        if ":" not in s.symbol:
            if (marks or funding):
                raise ConfigError(f"{s.path}: {s.symbol} is spot; mark and funding files are "
                                  "for perpetuals (BASE/QUOTE:SETTLE)")
            continue
        mark_file, funding_file = companions(Path(files[i]))
        if marks:
            mark_file = Path(marks[i])
        if funding:
            funding_file = Path(funding[i])
        if funding_file is None:
            log.warning("no_funding_file", symbol=s.symbol, path=str(files[i]),
                        note="the backtest books no funding")
        series[i] = with_perpetual_data(s, mark_file, funding_file)
    seen: dict[str, Path] = {}
    for s in series:
        if s.symbol in seen:
            raise ConfigError(f"{s.path} and {seen[s.symbol]} are both {s.symbol}")
        seen[s.symbol] = s.path
    return series
