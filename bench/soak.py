"""Soak: 100 symbols of 1m candles for a simulated 24 hours, paced faster than real time,
through the whole engine (strategy, risk, paper broker, a synchronous PostgreSQL ledger).

    python bench/soak.py [--symbols 100] [--hours 24] [--step-ms 50] \
        [--db postgresql://postgres@127.0.0.1:5432/postgres]

Every simulated minute one batch of 100 closed candles arrives (``--step-ms`` apart in wall
time). Printed per simulated hour: resident memory (RSS) and the decision latency of that
hour's batches (from the batch's arrival to its last order committed), p50 / p99 / max.
Memory growth is measured from the end of hour 1 (imports, caches and pools warmed) to the
end of the run; the aim is below 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402  (pgserver's dependency; present wherever the project installs)
from replay import create_db, drop_db  # noqa: E402  (bench/replay.py, beside this script)

from bot.brokers.paper import PaperBroker, static_markets  # noqa: E402
from bot.clock import SimulatedClock  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.domain import Candle, Mode, Warmup  # noqa: E402
from bot.ports import FeedEvent  # noqa: E402
from bot.sim.binance import synthetic_candles  # noqa: E402

STEP = 60_000
WARMUP = 200


class PacedFeed:
    """Pre-generated candles, one batch per simulated minute, paced in wall time."""

    def __init__(self, symbols: Sequence[str], minutes: int, step_s: float) -> None:
        start = 1_700_000_000_000 // STEP * STEP
        self.series = {s: synthetic_candles(s, "1m", start, WARMUP + minutes, seed=i,
                                            price=100.0 + 10 * i, vol=0.003)
                       for i, s in enumerate(symbols)}
        self._symbols = list(symbols)
        self.minutes, self.step_s = minutes, step_s
        self.arrived: list[float] = []  # perf_counter when each batch was handed over

    @property
    def symbols(self) -> list[str]:
        return self._symbols

    def resume_after(self, last_ts: dict[str, int]) -> None:
        return None

    async def stream(self) -> AsyncIterator[FeedEvent]:
        yield Warmup(tuple(c for s in self._symbols for c in self.series[s][:WARMUP]))
        t0 = time.perf_counter()
        for i in range(self.minutes):
            due = t0 + i * self.step_s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            batch: tuple[Candle, ...] = tuple(self.series[s][WARMUP + i] for s in self._symbols)
            self.arrived.append(time.perf_counter())
            yield batch

    async def close(self) -> None:
        return None


async def soak(db: str, n_symbols: int, hours: int, step_ms: float) -> dict[str, Any]:
    from bot.app import drive, new_run_id, open_postgres

    symbols = [f"S{i:03d}/USDT" for i in range(n_symbols)]
    settings = load_settings(environ={}, overrides={
        "database": {"url": db}, "timeframe": "1m", "symbols": symbols,
        "risk": {"max_open_positions": 20, "max_orders": 10_000}})
    feed = PacedFeed(symbols, hours * 60, step_ms / 1000)
    clock = SimulatedClock()
    broker = PaperBroker(static_markets(), clock, "USDT", settings.paper.starting_balance,
                         settings.paper.slippage_bps, settings.paper.participation,
                         settings.paper.fee_rate)
    ledger = await open_postgres(settings)
    proc = psutil.Process()
    latencies: list[tuple[int, float]] = []  # (minute, seconds)
    rss: list[tuple[int, float]] = []  # (hour, MiB)

    def hook(engine: Any) -> None:
        inner = engine.on_candles

        async def timed(candles: Sequence[Candle]) -> None:
            await inner(candles)
            minute = len(latencies)
            latencies.append((minute, time.perf_counter() - feed.arrived[minute]))
            if (minute + 1) % 60 == 0:
                gc.collect()
                rss.append(((minute + 1) // 60, proc.memory_info().rss / 2**20))
                lat = [x for m, x in latencies[-60:]]
                print(f"hour {(minute + 1) // 60:2d}: rss {rss[-1][1]:7.1f} MiB  decision "
                      f"p50 {statistics.median(lat) * 1000:6.1f} ms  p99 "
                      f"{sorted(lat)[int(0.99 * (len(lat) - 1))] * 1000:6.1f} ms  max "
                      f"{max(lat) * 1000:6.1f} ms", flush=True)

        engine.on_candles = timed

    t0 = time.perf_counter()
    outcome = await drive(settings, new_run_id(), f"soak:{uuid.uuid4().hex[:6]}", Mode.PAPER,
                          "soak", symbols, feed, broker, ledger, clock, hook)
    wall = time.perf_counter() - t0
    all_lat = sorted(x for _, x in latencies)
    base = rss[0][1] if rss else 0.0
    return {"symbols": n_symbols, "simulated_hours": hours, "wall_s": round(wall, 1),
            "candles": outcome.summary.get("candles"), "orders": outcome.summary.get("orders"),
            "trades": outcome.summary.get("trades"),
            "rss_hour1_mib": round(base, 1), "rss_end_mib": round(rss[-1][1], 1) if rss else None,
            "rss_growth_pct": round((rss[-1][1] / base - 1) * 100, 2) if rss else None,
            "decision_p50_ms": round(statistics.median(all_lat) * 1000, 2),
            "decision_p99_ms": round(all_lat[int(0.99 * (len(all_lat) - 1))] * 1000, 2),
            "decision_max_ms": round(all_lat[-1] * 1000, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--step-ms", type=float, default=50.0,
                    help="wall milliseconds per simulated minute")
    ap.add_argument("--db", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="admin URL; a fresh database is created beside it")
    args = ap.parse_args()
    db = create_db(args.db)
    try:
        result = asyncio.run(soak(db, args.symbols, args.hours, args.step_ms))
    finally:
        drop_db(args.db, db)
    for k, v in result.items():
        print(f"{k:>18}: {v}")


if __name__ == "__main__":
    main()
