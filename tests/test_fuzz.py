"""Fuzzing bad input: candles, config files and MQTT commands. Each bad input is refused with
a reason; nothing crashes; a refused candle file writes nothing."""

from __future__ import annotations

import contextlib
import math
import tomllib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.bus.signing import Command, Rejection, verify
from bot.config import Settings, load_settings
from bot.errors import ConfigError, DataError
from bot.feeds.files import load_candle_file
from bot.feeds.validate import CandleProblem, validate_series

H = 3_600_000
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                    st.integers(-10, 10**6).map(float))
rows = st.lists(st.tuples(st.integers(-5, 60).map(lambda i: 1_600_000_000_000 // H * H + i * H
                                                 + (7 if i == 59 else 0)),
                          numbers, numbers, numbers, numbers, numbers), min_size=1, max_size=80)


@settings(max_examples=300, deadline=None)
@given(rows)
def test_fuzzed_candles_are_valid_or_refused_with_a_row_and_reason(batch: list) -> None:
    """Across the examples this checks well over 10,000 candles."""
    try:
        candles, gaps = validate_series("X/USDT", "1h", batch)
    except CandleProblem as exc:
        assert 1 <= exc.row <= len(batch) and exc.reason
        return
    for c in candles:  # whatever passed is a possible candle
        assert min(c.open, c.high, c.low, c.close) > 0 and c.volume >= 0
        assert c.high >= max(c.open, c.close) and c.low <= min(c.open, c.close)
        assert all(math.isfinite(v) for v in (c.open, c.high, c.low, c.close, c.volume))
    assert all(b.ts > a.ts for a, b in zip(candles, candles[1:], strict=False))
    assert all(g.missing >= 1 for g in gaps)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=8), st.none()), max_size=7),
        max_size=20,
    )
)
def test_fuzzed_json_files_never_crash(tmp_path: Path, content: list) -> None:
    import json

    path = tmp_path / "BTC_USDT-1h.json"
    path.write_text(json.dumps(content, default=str).replace("Infinity", "1e999"))
    try:
        load_candle_file(path, "1h")
    except DataError as exc:
        assert str(path) in str(exc)


keys = st.sampled_from(
    [
        "mode",
        "timeframe",
        "symbols",
        "instance",
        "risk",
        "exchange",
        "paper",
        "mqtt",
        "jobs",
        "bogus",
        "risk.kelly_fraction",
        "exchange.poll_interval",
        "paper.starting_balance",
        "mqtt.port",
        "strategy.name",
    ]
)
values = st.one_of(
    st.integers(-5, 10**6), st.floats(allow_nan=False), st.text(max_size=10), st.booleans()
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(keys, values, max_size=6))
def test_fuzzed_config_files_load_or_name_the_problem(tmp_path: Path, entries: dict) -> None:
    lines: dict[str, list[str]] = {"": []}
    for k, v in entries.items():
        section, _, key = k.rpartition(".")
        lit = (
            repr(v).lower()
            if isinstance(v, bool)
            else (f'"{v}"' if isinstance(v, str) else repr(v))
        )
        lit = lit.replace("\\", "\\\\") if isinstance(v, str) else lit
        lines.setdefault(section, []).append(f"{key} = {lit}")
    text = (
        "\n".join(lines.pop(""))
        + "\n"
        + "".join(f"\n[{sec}]\n" + "\n".join(body) + "\n" for sec, body in lines.items())
    )
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    with contextlib.suppress(tomllib.TOMLDecodeError):
        tomllib.loads(text)
    try:
        s = load_settings(path, environ={})
    except ConfigError as exc:
        assert str(path) in str(exc) and len(str(exc)) > len(str(path)) + 5
        return
    assert isinstance(s, Settings)


@settings(max_examples=2000, deadline=None)
@given(
    st.sampled_from(["kill", "resume", "status", "nuke", ""]),
    st.dictionaries(
        st.sampled_from(["id", "ts", "nonce", "operator", "reason", "level", "sig", "x"]),
        st.one_of(st.text(max_size=12), st.integers(), st.none(), st.booleans()),
        max_size=8,
    ),
)
def test_fuzzed_commands_are_refused_with_a_reason(action: str, body: dict) -> None:
    import json

    verdict = verify(
        action,
        json.dumps(body).encode(),
        "secret-key-1234",
        1_800_000_000_000,
        set(),
        instance="default",
        account="default:paper:binance",
    )
    assert not isinstance(verdict, Command)  # nobody can forge a signature by chance
    assert isinstance(verdict, Rejection) and verdict.reason


def _series(draw: st.DrawFn) -> list[list[object]]:
    """A valid 1h series as a JSON file holds it (random walk, some gaps, integer stamps, some
    integer prices), then maybe one field or stamp broken."""
    n = draw(st.integers(1, 60))
    t, price, out = 1_600_000_000_000 // H * H, draw(st.floats(0.01, 1e6)), []
    for _ in range(n):
        t += H * draw(st.sampled_from([1, 1, 1, 1, 2, 5]))
        o, c = price, price * draw(st.floats(0.9, 1.1))
        hi, lo = max(o, c) * draw(st.floats(1, 1.05)), min(o, c) * draw(st.floats(0.95, 1))
        row: list[object] = [t, o, hi, lo, c, draw(st.floats(0, 1e9))]
        if draw(st.integers(0, 9)) == 0:  # a flat candle in whole numbers
            whole = int(price) + 1
            row = [t, whole, whole, whole, whole, draw(st.integers(0, 10**9))]
        out.append(row)
        price = c
    if draw(st.booleans()):
        r, col = draw(st.integers(0, n - 1)), draw(st.integers(0, 5))
        if col == 0:  # the JSON reader has made every stamp an int or a float by then
            out[r][0] = draw(st.sampled_from([out[r][0] + 7, out[max(r - 1, 0)][0],
                                              out[max(r - 2, 0)][0], -H, float(out[r][0])]))
        else:
            out[r][col] = draw(st.sampled_from([math.nan, math.inf, -1.0, 0.0, 1e-300, 1e300,
                                                -math.inf, 0, -1, True, None, "1"]))
    return out


@settings(max_examples=400, deadline=None)
@given(st.composite(_series)())
def test_the_columnwise_check_gives_what_the_row_check_gives(batch: list) -> None:
    """``validate_columns`` (how a whole JSON file is loaded) accepts the series that
    ``validate_series`` (row by row, the reference) accepts, with equal candles (floats, int
    stamps) and gaps; on any bad or unusual row it declines, and the row reader decides."""
    from bot.feeds.files import _json_ts, _row
    from bot.feeds.validate import validate_columns

    fast = validate_columns("X/USDT", "1h", batch)
    try:  # what the JSON reader and the row check make of it
        slow = validate_series("X/USDT", "1h", [_row(r, i, _json_ts) for i, r in
                                                enumerate(batch, 1)])
    except CandleProblem:
        assert fast is None
        return
    if all(type(r[0]) is int and {type(x) for x in r[1:]} <= {int, float} for r in batch):
        assert fast == slow
        assert all(type(c.ts) is int and type(c.volume) is float for c in fast[0])
    else:  # a float stamp or a number in a string: the row reader's to read
        assert fast is None
