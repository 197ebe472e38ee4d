"""Candle files: CSV (``timestamp,open,high,low,close,volume``), freqtrade JSON and feather.

``load_candle_file`` reads and validates a whole file before anything downstream sees it, so a
malformed file fails with file, row and reason and nothing of the run is written.
"""

from __future__ import annotations

import csv
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bot.domain import TIMEFRAME_MS, Candle, CandleSeries
from bot.errors import DataError
from bot.feeds.validate import CandleProblem, Row, validate_columns, validate_series

CSV_HEADER = ["timestamp", "open", "high", "low", "close", "volume"]
_NAME = re.compile(
    r"^(?P<base>[A-Za-z0-9]+)_(?P<quote>[A-Za-z0-9]+)(?:_(?P<settle>[A-Za-z0-9]+))?"
    r"-(?P<tf>\w+?)(?:-\w+)?$"
)


def symbol_from_filename(path: Path) -> tuple[str, str] | None:
    """``BTC_USDT-1h.json`` -> ("BTC/USDT", "1h"); a perpetual as freqtrade names it,
    ``BTC_USDT_USDT-1h-futures.feather``, -> ("BTC/USDT:USDT", "1h"); None when the name
    says nothing."""
    m = _NAME.match(path.name.split(".")[0])
    if not m:
        return None
    symbol = f"{m['base'].upper()}/{m['quote'].upper()}"
    if m["settle"]:
        symbol += f":{m['settle'].upper()}"
    return symbol, m["tf"]


def parse_timestamp(text: str) -> int:
    """Milliseconds since the epoch, from ms digits or ISO-8601 (naive means UTC)."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        value = int(text)
        return value * 1000 if abs(value) < 10**11 else value  # seconds -> ms
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"timestamp {text!r} is neither epoch milliseconds nor ISO-8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} is not a number ({value!r})")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a number ({value!r})") from None


def _row(values: list[Any], n: int, ts_parser: Any = int) -> Row:
    if len(values) != 6:
        raise CandleProblem(
            n, f"expected 6 fields (timestamp,open,high,low,close,volume), got {len(values)}"
        )
    try:
        ts = ts_parser(values[0])
        nums = [_number(v, name) for v, name in zip(values[1:], CSV_HEADER[1:], strict=False)]
    except ValueError as exc:
        raise CandleProblem(n, str(exc)) from None
    return (ts, *nums)


def _json_ts(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"timestamp {value!r} is not epoch milliseconds")
    return int(value)


def _read_csv(path: Path) -> list[Row]:
    rows: list[Row] = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: file is empty")
        if [h.strip().lower() for h in header] != CSV_HEADER:
            raise DataError(
                f"{path}: row 0: header must be {','.join(CSV_HEADER)}, got {','.join(header)}"
            )
        for i, values in enumerate(reader, start=1):
            if not values:
                continue
            rows.append(_row(values, i, lambda t: parse_timestamp(str(t))))
    return rows


def _read_json(path: Path) -> list[Row]:
    raw = path.read_bytes()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # the standard parser also reads NaN and Infinity, which validation then names
            data = json.loads(raw)
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of [ms, open, high, low, close, volume] rows")
    rows = []
    for i, values in enumerate(data, start=1):
        if not isinstance(values, list):
            raise CandleProblem(i, f"expected a list, got {type(values).__name__}")
        rows.append(_row(values, i, _json_ts))
    return rows


def _json_rows(raw: bytes) -> list[object] | None:
    """A JSON file's top-level list, if the fast parser reads it (NaN and Infinity it does
    not: those go to the row-by-row reader, which names them)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, list) else None


def _read_feather(path: Path) -> list[Row]:
    import pyarrow.feather as feather

    try:
        table = feather.read_table(str(path))
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable feather file: {exc}") from None
    names = {n.lower(): n for n in table.column_names}
    ts_col = names.get("date") or names.get("timestamp")
    missing = [c for c in CSV_HEADER[1:] if c not in names]
    if ts_col is None or missing:
        raise DataError(f"{path}: feather needs columns date|timestamp,open,high,low,close,volume")
    col = table.column(ts_col)
    # not adapter probing: pyarrow sets ``unit`` on timestamp column types only
    unit = getattr(col.type, "unit", None)
    dates = col.cast("int64").to_pylist() if unit else col.to_pylist()
    factor = {"s": 1000, "ms": 1, "us": 1e-3, "ns": 1e-6}.get(unit or "ms", 1)
    cols = [table.column(names[c]).to_pylist() for c in CSV_HEADER[1:]]
    rows = []
    for i, values in enumerate(zip(dates, *cols, strict=False), start=1):
        ts = None if values[0] is None else int(values[0] * factor)
        rows.append(_row([ts, *values[1:]], i, _json_ts))
    return rows


READERS = {".csv": _read_csv, ".json": _read_json, ".feather": _read_feather}


def reader_for(path: Path) -> Any:
    """The row reader for ``path``'s format; a clear error for an unknown format or a
    missing file."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown format {path.suffix!r}; use .csv, .json or .feather")
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    return reader


def load_candle_file(
    path: Path | str, timeframe: str, symbol: str | None = None, drop_partial: bool | None = None
) -> CandleSeries:
    """Read, parse and validate a whole candle file.

    freqtrade writes the still-forming candle as its last row; for freqtrade formats (JSON and
    feather) that row is dropped unless ``drop_partial`` says otherwise.
    """
    path = Path(path)
    reader = reader_for(path)
    guessed = symbol_from_filename(path)
    if symbol is None:
        if guessed is None:
            raise DataError(f"{path}: cannot tell the symbol from the name; pass --symbols")
        symbol = guessed[0]
    if guessed is not None and guessed[1] != timeframe and guessed[1] in TIMEFRAME_MS:
        raise DataError(f"{path}: file name says timeframe {guessed[1]}, but {timeframe} was asked")
    if drop_partial is None:
        drop_partial = path.suffix.lower() != ".csv"
    if reader is _read_json:
        rows = _json_rows(path.read_bytes())
        if rows is not None and len(rows) > int(drop_partial):
            fast = validate_columns(symbol, timeframe, rows[:-1] if drop_partial else rows)
            if fast is not None:
                return CandleSeries(path, symbol, timeframe, *fast, drop_partial)
    try:  # row by row: the reference, and the path that names a bad row
        rows = reader(path)
        dropped = bool(drop_partial and rows)
        if dropped:
            rows = rows[:-1]
        if not rows:
            raise DataError(f"{path}: no candles")
        candles, gaps = validate_series(symbol, timeframe, rows)
    except CandleProblem as exc:
        raise DataError(f"{path}: row {exc.row}: {exc.reason}") from None
    return CandleSeries(path, symbol, timeframe, candles, gaps, dropped)


def write_csv(path: Path, candles: list[Candle], append: bool = False) -> None:
    """Write candles in the CSV format this module reads (timestamps in ms)."""
    new = not append or not path.exists() or path.stat().st_size == 0
    with path.open("a" if append else "w", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(CSV_HEADER)
        for c in candles:
            w.writerow(
                [c.ts, repr(c.open), repr(c.high), repr(c.low), repr(c.close), repr(c.volume)]
            )
