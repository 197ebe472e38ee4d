"""Does a preset cost the same on every timeframe? Training time of one preset on 15m and on 1h
candles covering the same number of windows (issue 16's acceptance benchmark).

    python bench/presets.py [--preset quick] [--pairs BTC,ETH] [--models all] [--device cpu]

15m candles are built from ../shared/data/binance-spot-5m (three complete 5m candles per 15m
candle; a 15m slot with a 5m candle missing is left out, as a gap). The 1h run takes the same
number of the most recent 1h candles per pair from ../shared/data/binance-spot-1h, so both
runs have the same rows, hence the same train, validation and test windows. Both train every
member the way `stackbot train` does. It prints the windows, the wall time of each run and
their ratio; the presets are defined by windows and epochs, so the ratio should be about 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bot.domain import Candle, CandleSeries, timeframe_ms  # noqa: E402
from bot.feeds.files import load_candle_file
from models.dataset import symbol_data  # noqa: E402
from models.members import REGISTRY  # noqa: E402
from models.train import PRESETS, barrier_of, train_ensemble  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def resample(series: CandleSeries, timeframe: str) -> CandleSeries:
    """Complete higher-timeframe candles from a lower one: a slot is kept only when every
    lower candle in it is present."""
    step, sub = timeframe_ms(timeframe), timeframe_ms(series.timeframe)
    per = step // sub
    slots: dict[int, list[Candle]] = {}
    for c in series.candles:
        slots.setdefault(c.ts - c.ts % step, []).append(c)
    out = [Candle(series.symbol, timeframe, ts, cs[0].open, max(c.high for c in cs),
                  min(c.low for c in cs), cs[-1].close, sum(c.volume for c in cs))
           for ts, cs in sorted(slots.items()) if len(cs) == per]
    return CandleSeries(series.path, series.symbol, timeframe, out, [], False)


def tail(series: CandleSeries, rows: int) -> CandleSeries:
    return CandleSeries(series.path, series.symbol, series.timeframe, series.candles[-rows:],
                        [], False)


def timed(name: str, series: list[CandleSeries], cfg, members: list[str]) -> float:  # type: ignore[no-untyped-def]
    data = [symbol_data(s, barrier_of(cfg)) for s in series]
    t0 = time.perf_counter()
    res = train_ensemble(data, cfg, members)
    wall = time.perf_counter() - t0
    p = res.parts
    span = ", ".join(f"{s.symbol} {len(s.candles):,} candles" for s in series)
    print(f"{name:>4}: {span}; windows train {len(p.train):,} (trained on at most "
          f"{cfg.max_train_samples:,} per member), val {len(p.val):,}, test {len(p.test):,}; "
          f"{wall:.1f} s")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--pairs", default="BTC,ETH")
    ap.add_argument("--models", default="all")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=1, help="runs per timeframe (median)")
    args = ap.parse_args()
    if not SHARED.exists():
        raise SystemExit(f"{SHARED} is absent: the benchmark needs ../shared/data")
    cfg = replace(PRESETS[args.preset], device=args.device)
    members = list(REGISTRY) if args.models == "all" else args.models.split(",")
    pairs = args.pairs.split(",")
    m15 = [resample(load_candle_file(SHARED / "binance-spot-5m" / f"{p}_USDT-5m.json", "5m"), "15m")
           for p in pairs]
    rows = min(len(s.candles) for s in m15)
    m15 = [tail(s, rows) for s in m15]
    h1 = [tail(load_candle_file(SHARED / "binance-spot-1h" / f"{p}_USDT-1h.json", "1h"), rows)
          for p in pairs]
    print(f"preset {args.preset} ({cfg.epochs} epochs, at most {cfg.max_train_samples:,} "
          f"training windows per member), members {len(members)}, device {args.device}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    # torch's first run in a process pays one-off costs (kernels, allocator): warm up untimed
    train_ensemble([symbol_data(s, barrier_of(cfg)) for s in h1], PRESETS["tiny"], ["lstm"])
    runs: dict[str, list[float]] = {"15m": [], "1h": []}
    for r in range(args.repeat):  # alternate the order, so drift does not favour one
        order = [("15m", m15), ("1h", h1)] if r % 2 == 0 else [("1h", h1), ("15m", m15)]
        for name, series in order:
            runs[name].append(timed(name, series, cfg, members))
    a, b = statistics.median(runs["15m"]), statistics.median(runs["1h"])
    print(f"median of {args.repeat}: 15m {a:.1f} s, 1h {b:.1f} s; 15m / 1h training time: "
          f"{a / b:.2f}")


if __name__ == "__main__":
    main()
