"""Candle files: every malformed-row fault is named with file, row and reason."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pytest

from bot.errors import DataError
from bot.feeds.files import load_candle_file, symbol_from_filename
from bot.feeds.validate import validate_columns
from tests.helpers import T0, candles, write_series

H = 3_600_000


def _csv(tmp_path: Path, rows: list[list[object]], name: str = "BTC_USDT-1h.csv") -> Path:
    path = tmp_path / name
    lines = ["timestamp,open,high,low,close,volume"] + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = [[T0 + i * H, 100 + i, 102 + i, 99 + i, 101 + i, 10] for i in range(5)]

FAULTS = [
    ("nan price", 3, [T0 + 2 * H, "nan", 102, 99, 101, 10], "open is nan"),
    ("zero price", 3, [T0 + 2 * H, 100, 102, 99, 0, 10], "close is not positive"),
    ("negative price", 3, [T0 + 2 * H, 100, 102, -1, 101, 10], "low is not positive"),
    (
        "high below body",
        3,
        [T0 + 2 * H, 100, 100.5, 99, 101, 10],
        "high 100.5 is below max(open, close)",
    ),
    (
        "low above body",
        3,
        [T0 + 2 * H, 100, 102, 100.5, 101, 10],
        "low 100.5 is above min(open, close)",
    ),
    ("negative volume", 3, [T0 + 2 * H, 100, 102, 99, 101, -5], "volume is negative"),
    ("duplicate timestamp", 3, [T0 + 1 * H, 100, 102, 99, 101, 10], "duplicate timestamp"),
    ("out of order", 3, [T0 + 0 * H, 100, 102, 99, 101, 10], "out of order"),
    ("not a number", 3, [T0 + 2 * H, 100, "abc", 99, 101, 10], "high is not a number"),
    ("unaligned", 3, [T0 + 2 * H + 5, 100, 102, 99, 101, 10], "not aligned to the 1h"),
    ("bad timestamp", 3, ["yesterday", 100, 102, 99, 101, 10], "neither epoch milliseconds"),
    ("missing field", 3, [T0 + 2 * H, 100, 102, 99, 101], "expected 6 fields"),
]


@pytest.mark.parametrize("label,row_no,row,reason", FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_names_file_row_and_reason(
    tmp_path: Path, label: str, row_no: int, row: list[object], reason: str
) -> None:
    rows = [list(r) for r in GOOD]
    rows[row_no - 1] = row
    path = _csv(tmp_path, rows)
    with pytest.raises(DataError) as exc:
        load_candle_file(path, "1h")
    msg = str(exc.value)
    assert str(path) in msg
    assert f"row {row_no}:" in msg
    assert reason in msg


def test_gaps_are_reported_not_bridged(tmp_path: Path) -> None:
    rows = [r for i, r in enumerate(GOOD) if i != 2]  # drop the third candle
    series = load_candle_file(_csv(tmp_path, rows), "1h")
    assert len(series.candles) == 4
    assert [(g.after_ts, g.next_ts, g.missing) for g in series.gaps] == [(T0 + H, T0 + 3 * H, 1)]
    assert all(c.ts != T0 + 2 * H for c in series.candles)


def test_csv_accepts_iso_timestamps(tmp_path: Path) -> None:
    rows = [["2020-09-13T12:00:00Z", 1, 2, 0.5, 1.5, 3], ["2020-09-13 13:00:00", 1, 2, 0.5, 1.5, 3]]
    series = load_candle_file(_csv(tmp_path, rows), "1h")
    # 2020-09-13T12:00:00Z is 1599998400 s after the epoch; naive times are UTC
    assert [c.ts for c in series.candles] == [1_599_998_400_000, 1_600_002_000_000]


def test_freqtrade_json_drops_the_forming_last_row(tmp_path: Path) -> None:
    path = write_series(tmp_path, n=50, fmt="json")
    series = load_candle_file(path, "1h")
    assert len(series.candles) == 49 and series.dropped_partial
    raw = json.loads(path.read_text())
    assert series.candles[-1].ts == raw[-2][0]


def test_feather_round_trip(tmp_path: Path) -> None:
    rows = candles(n=30)
    table = pa.table(
        {
            "date": pa.array([c.ts for c in rows], type=pa.timestamp("ms", tz="UTC")),
            "open": [c.open for c in rows],
            "high": [c.high for c in rows],
            "low": [c.low for c in rows],
            "close": [c.close for c in rows],
            "volume": [c.volume for c in rows],
        }
    )
    path = tmp_path / "ETH_USDT-1h.feather"
    feather.write_feather(table, str(path))
    series = load_candle_file(path, "1h")
    assert series.symbol == "ETH/USDT"
    assert [c.ts for c in series.candles] == [c.ts for c in rows[:-1]]
    assert math.isclose(series.candles[5].close, rows[5].close)


def test_json_with_nan_names_row(tmp_path: Path) -> None:
    path = tmp_path / "BTC_USDT-1h.json"
    path.write_text(f"[[{T0}, 1, 2, 0.5, 1.5, 3], [{T0 + H}, NaN, 2, 0.5, 1.5, 3], "
                    f"[{T0 + 2 * H}, 1, 2, 0.5, 1.5, 3]]")
    with pytest.raises(DataError, match=r"row 2: open is nan"):
        load_candle_file(path, "1h")


def test_timeframe_mismatch_with_file_name(tmp_path: Path) -> None:
    path = write_series(tmp_path, n=10)
    with pytest.raises(DataError, match="file name says timeframe 1h, but 5m"):
        load_candle_file(path, "5m")


def test_symbol_from_filename() -> None:
    assert symbol_from_filename(Path("BTC_USDT-1h.json")) == ("BTC/USDT", "1h")
    assert symbol_from_filename(Path("SOL_USDT-5m.csv")) == ("SOL/USDT", "5m")
    assert symbol_from_filename(Path("notes.txt")) is None


@pytest.mark.parametrize("content,fast", [
    ([[T0 + i * H, 100 + i, 102 + i, 99 + i, 101.5 + i, 10] for i in range(6)], True),
    ([[T0 + i * i * H, 100, 102, 99, 101, 0] for i in range(6)], True),  # gaps
    ([[T0 + i * H, 100, 102, 99, 101, True] for i in range(6)], False),
    ([[T0 + i * H, 100, 102, 99, 101, "10"] for i in range(6)], False),
    ([[T0 + i * H, 100, 102, 99, 101, 10] if i != 2 else [T0, 1, 2] for i in range(6)], False),
], ids=["clean", "gaps", "boolean", "string", "ragged"])
def test_json_loads_the_same_by_columns_and_by_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: list, fast: bool
) -> None:
    """A whole clean JSON file is checked column by column; the result is what the row-by-row
    reader gives, and anything the columns cannot hold goes to that reader."""
    import bot.feeds.files as files

    path = tmp_path / "BTC_USDT-1h.json"
    path.write_text(json.dumps(content))
    assert (validate_columns("BTC/USDT", "1h", content[:-1]) is not None) is fast

    def outcome() -> object:
        try:
            return load_candle_file(path, "1h")
        except DataError as exc:
            return str(exc)

    by_columns = outcome()
    monkeypatch.setattr(files, "validate_columns", lambda *args: None)
    assert by_columns == outcome()


def test_json_with_an_infinite_timestamp_names_row(tmp_path: Path) -> None:
    """1e999 parses as infinity; it was an OverflowError, not a named row."""
    path = tmp_path / "BTC_USDT-1h.json"
    path.write_text(f"[[1e999, 1, 1, 1, 1, 1], [{T0}, 1, 1, 1, 1, 1]]")
    with pytest.raises(DataError, match=r"row 1: timestamp inf is not epoch milliseconds"):
        load_candle_file(path, "1h")
