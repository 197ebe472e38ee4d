"""The ensemble's signals for a backtest, computed ahead (models/ensemble_batch.py) against
the stepwise source that paper and live run: seconds for a whole candle file, without the
engine or the database (bench/peer.py case e times the whole backtest process).

    python bench/ensemble_ahead.py --ensemble PATH/ensemble.json
        [--data ../shared/data/binance-spot-1h/BTC_USDT-1h.json] [--device cpu|cuda]
        [--stepwise 2000]

It prints the look-ahead (features of the whole file and every member's forward), the
candle-by-candle part (online weights, combiner, signals), and the stepwise source's rate
over the first ``--stepwise`` scored candles, extrapolated to the file, for the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bot.domain import CandleSeries, timeframe_ms  # noqa: E402
from bot.feeds.files import load_candle_file  # noqa: E402
from models.device import torch_thread  # noqa: E402
from models.ensemble import Ensemble  # noqa: E402
from models.ensemble_batch import BatchedEnsembleSignalSource  # noqa: E402
from models.ensemble_module import gather_rows  # noqa: E402
from models.ensemble_source import EnsembleSignalSource  # noqa: E402
from models.features import normalise, raw_features  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance-spot-1h"


async def batched(ens: Ensemble, series: CandleSeries) -> tuple[float, float, int]:
    src = BatchedEnsembleSignalSource(ens, series.timeframe, [series])
    t0 = time.perf_counter()
    n = len(await src.on_candles([series.candles[0]]))
    ahead = time.perf_counter() - t0
    t1 = time.perf_counter()
    for c in series.candles[1:]:
        n += len(await src.on_candles([c]))
    return ahead, time.perf_counter() - t1, n


async def stepwise(ens: Ensemble, series: CandleSeries, scored: int) -> tuple[float, int]:
    """Seconds for the first ``scored`` signals after the warm-up, candle by candle."""
    src = EnsembleSignalSource(ens, series.timeframe)
    n, t0 = 0, None
    for c in series.candles:
        got = len(await src.on_candles([c]))
        if got and t0 is None:
            t0 = time.perf_counter()
        n += got
        if n >= scored:
            break
    return time.perf_counter() - (t0 or time.perf_counter()), n


@torch.no_grad()
def per_member(ens: Ensemble, series: CandleSeries, chunk: int = 512) -> None:
    """Each member through the look-ahead's own path (its per-step part once per row, then
    its windows; the GNN over one-symbol panels), over every window of the file, chunks of
    ``chunk``, on one thread: seconds for the file."""
    torch.set_num_threads(1)
    cs = series.candles
    ohlcv = np.array([(c.open, c.high, c.low, c.close, c.volume) for c in cs])
    feats = normalise(raw_features(ohlcv, np.array([c.ts for c in cs]),
                                  timeframe_ms(series.timeframe))).astype(np.float32)
    ok = ~np.isnan(feats).any(axis=1)
    L = ens.lookback
    ends = np.array([i for i in range(L - 1, len(feats)) if ok[i - L + 1:i + 1].all()])
    total = 0.0
    for m in ens.module.typed:
        t0 = time.perf_counter()
        for lo in range(0, len(ends), chunk):
            e = ends[lo:lo + chunk]
            first = int(e[0]) - L + 1
            rows = torch.as_tensor(feats[first:int(e[-1]) + 1])
            idx = torch.as_tensor(e - first - (L - 1))[:, None] + torch.arange(L)
            if m.cross_sectional:
                m.forward_panel(gather_rows(rows, idx).unsqueeze(1))  # type: ignore[operator]
            elif m.name == "vae":
                m.confident_regime(gather_rows(rows, idx))  # type: ignore[operator]
            else:
                s = m.steps(rows)
                m.windows(gather_rows(s, idx))
        secs = time.perf_counter() - t0
        total += secs
        print(f"  {m.name:<16}{secs:6.2f} s", flush=True)
    print(f"  {'all':<16}{total:6.2f} s ({len(ends):,} windows, one thread, chunks of {chunk})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ensemble", required=True)
    ap.add_argument("--data", type=Path, default=DATA / "BTC_USDT-1h.json")
    ap.add_argument("--symbol", default="BTC/USDT")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--stepwise", type=int, default=2000)
    ap.add_argument("--per-member", action="store_true",
                    help="also time each member through the look-ahead's path (one thread)")
    args = ap.parse_args()
    path = Path(args.ensemble)
    trained = Ensemble.trained_barrier(path)
    if trained is None:
        raise SystemExit(f"{path} predates triple-barrier training: retrain it")
    # on the process's one torch thread, which the sources score on (models/device.py)
    ens = torch_thread().submit(Ensemble.load, path, None, trained, device=args.device).result()
    series = load_candle_file(args.data, "1h", args.symbol)
    print(f"{args.data.name}: {len(series.candles):,} candles, device {args.device}, "
          f"{len(ens.names)} members, torch {torch.__version__}", flush=True)
    if args.per_member:
        torch_thread().submit(per_member, ens, series).result()
    ahead, loop, n = asyncio.run(batched(ens, series))
    print(f"batched: look-ahead {ahead:.2f} s, candle by candle {loop:.2f} s, "
          f"{n:,} signals, total {ahead + loop:.2f} s", flush=True)
    secs, m = asyncio.run(stepwise(ens, series, args.stepwise))
    per = secs / max(m, 1)
    print(f"stepwise: {m:,} signals in {secs:.2f} s ({per * 1000:.2f} ms each); "
          f"{n:,} would take {per * n:.0f} s, {per * n / (ahead + loop):.0f}x the batched")


if __name__ == "__main__":
    main()
