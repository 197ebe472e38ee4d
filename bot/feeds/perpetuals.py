"""A perpetual's files beside its trade candles: mark-price candles and funding rates.

freqtrade names them ``BTC_USDT_USDT-1h-futures.feather``, ``...-1h-mark.feather`` and
``...-1h-funding_rate.feather`` (the rate in the ``open`` column, the other columns 0). Both
are read and validated whole before a run starts, like candle files: a malformed one fails
with the file, the row and the reason, and nothing of the run is written.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from bot.domain import CandleSeries, FundingRate, MarkBar
from bot.errors import DataError
from bot.feeds.files import load_candle_file, reader_for
from bot.feeds.validate import CandleProblem

# a sanity bound, not a venue rule: Binance caps BTCUSDT at a few per cent per period
MAX_ABS_RATE = 0.1
_KINDS = ("-futures", "-mark", "-funding_rate")


def companions(path: Path) -> tuple[Path | None, Path | None]:
    """The mark and funding files freqtrade writes beside ``path`` (None where absent)."""
    stem, suffix = path.name[: -len(path.suffix)] if path.suffix else path.name, path.suffix
    for kind in _KINDS:
        if stem.endswith(kind):
            stem = stem[: -len(kind)]
            break
    mark = path.with_name(f"{stem}-mark{suffix}")
    funding = path.with_name(f"{stem}-funding_rate{suffix}")
    return (mark if mark.exists() else None), (funding if funding.exists() else None)


def load_funding_file(path: Path | str, symbol: str) -> list[FundingRate]:
    """Funding rates, ascending in time; the rate is the ``open`` column."""
    path = Path(path)
    reader = reader_for(path)
    try:
        rows = reader(path)
    except CandleProblem as exc:
        raise DataError(f"{path}: row {exc.row}: {exc.reason}") from None
    out: list[FundingRate] = []
    prev: int | None = None
    for n, row in enumerate(rows, start=1):
        ts, rate = int(row[0]), float(row[1])
        if not math.isfinite(rate):
            raise DataError(f"{path}: row {n}: funding rate is {rate}")
        if abs(rate) > MAX_ABS_RATE:
            raise DataError(f"{path}: row {n}: funding rate {rate} is beyond +-{MAX_ABS_RATE} "
                            "per period: not a funding rate")
        if ts < 0:
            raise DataError(f"{path}: row {n}: timestamp {ts} is negative")
        if prev is not None and ts <= prev:
            what = "duplicate" if ts == prev else "out of order"
            raise DataError(f"{path}: row {n}: timestamp {ts} is {what} (after {prev})")
        out.append(FundingRate(symbol, ts, rate))
        prev = ts
    if not out:
        raise DataError(f"{path}: no funding rates")
    return out


def with_perpetual_data(series: CandleSeries, mark: Path | None,
                        funding: Path | None) -> CandleSeries:
    """The series with each candle's mark-price bar (where the mark file has that candle)
    and the funding rates."""
    candles = series.candles
    if mark is not None:
        marks = load_candle_file(mark, series.timeframe, series.symbol)
        bars = {c.ts: MarkBar(c.open, c.high, c.low, c.close) for c in marks.candles}
        candles = [dataclasses.replace(c, mark=bars.get(c.ts)) for c in candles]
    rates = tuple(load_funding_file(funding, series.symbol)) if funding is not None else ()
    return dataclasses.replace(series, candles=candles, funding=rates)
