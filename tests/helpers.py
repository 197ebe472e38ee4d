"""Test data the tests make themselves (core tests never need ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bot.domain import Candle, CandleSeries, timeframe_ms
from bot.feeds.files import write_csv
from bot.sim.binance import synthetic_candles

T0 = 1_600_000_000_000 - 1_600_000_000_000 % 3_600_000  # aligned to the hour


def candles(symbol: str = "BTC/USDT", n: int = 500, timeframe: str = "1h", seed: int = 3,
            start: int = T0) -> list[Candle]:
    return synthetic_candles(symbol, timeframe, start, n, seed)


def write_series(dir_: Path, symbol: str = "BTC/USDT", n: int = 500, timeframe: str = "1h",
                 seed: int = 3, fmt: str = "csv") -> Path:
    rows = candles(symbol, n, timeframe, seed)
    name = f"{symbol.replace('/', '_')}-{timeframe}.{fmt}"
    path = dir_ / name
    if fmt == "csv":
        write_csv(path, rows)
    else:
        path.write_text(
            json.dumps([[c.ts, c.open, c.high, c.low, c.close, c.volume] for c in rows])
        )
    return path


def step(timeframe: str = "1h") -> int:
    return timeframe_ms(timeframe)


def backtest_parts(dir_: Path, db_url: str, n: int, seed: int):  # type: ignore[no-untyped-def]
    """What a backtest plugs into the engine, for tests that drive it by hand:
    (settings, simulated clock, replay feed, paper broker) over ``n`` generated 1h candles."""
    from bot.brokers.paper import PaperBroker, static_markets
    from bot.clock import SimulatedClock
    from bot.config import load_settings
    from bot.feeds.files import load_candle_file
    from bot.feeds.replay import ReplayFeed

    path = write_series(dir_, "BTC/USDT", n, seed=seed)
    settings = load_settings(overrides={"database": {"url": db_url}, "timeframe": "1h"}, environ={})
    clock = SimulatedClock()
    feed = ReplayFeed([load_candle_file(path, "1h")])
    p = settings.paper
    return settings, clock, feed, PaperBroker(static_markets(), clock, p.quote, p.starting_balance)


def ar1_series(
    n: int, phi: float = 0.0, seed: int = 0, symbol: str = "SYN/USDT", gap_at: int | None = None
) -> CandleSeries:
    """Candles whose log returns follow r_t = phi * r_(t-1) + noise (phi = 0: pure noise)."""
    rng = np.random.default_rng(seed)
    r = np.zeros(n)
    for i in range(1, n):
        r[i] = phi * r[i - 1] + rng.normal(0, 0.01)
    close = 100 * np.exp(np.cumsum(r))
    candles = []
    H = 3_600_000
    ts = 1_600_000_000_000 - 1_600_000_000_000 % H
    for i in range(n):
        if gap_at is not None and i == gap_at:
            ts += 5 * H
        o = close[i - 1] if i else close[0]
        c = close[i]
        hi, lo = (
            max(o, c) * (1 + abs(rng.normal(0, 0.002))),
            min(o, c) * (1 - abs(rng.normal(0, 0.002))),
        )
        candles.append(Candle(symbol, "1h", ts, o, hi, lo, c, float(rng.uniform(1, 10))))
        ts += H
    return CandleSeries(Path("synthetic"), symbol, "1h", candles, [], False)
