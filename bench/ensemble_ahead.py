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

import torch  # noqa: E402

from bot.domain import CandleSeries  # noqa: E402
from bot.feeds.files import load_candle_file  # noqa: E402
from models.device import torch_thread  # noqa: E402
from models.ensemble import Ensemble, EnsembleSignalSource  # noqa: E402
from models.ensemble_batch import BatchedEnsembleSignalSource  # noqa: E402

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
def per_member(ens: Ensemble, n: int = 2048) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.randn(n, ens.lookback, 20, device=ens.device)
    total = 0.0
    for m in ens.module.members:
        t0 = time.perf_counter()
        if m.cross_sectional:
            m.forward_panel(x.unsqueeze(1))
        elif m.name == "vae":
            m.confident_regime(x)
        else:
            m(x)
        ms = (time.perf_counter() - t0) * 1000 / n
        total += ms
        print(f"  {m.name:<16}{ms:.3f} ms a window", flush=True)
    print(f"  {'all':<16}{total:.3f} ms a window (one thread, {n} windows a call)")
    torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ensemble", required=True)
    ap.add_argument("--data", type=Path, default=DATA / "BTC_USDT-1h.json")
    ap.add_argument("--symbol", default="BTC/USDT")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--stepwise", type=int, default=2000)
    ap.add_argument("--per-member", action="store_true",
                    help="also time each member's forward (ms a window, one thread)")
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
        torch_thread().submit(per_member, ens).result()
    ahead, loop, n = asyncio.run(batched(ens, series))
    print(f"batched: look-ahead {ahead:.2f} s, candle by candle {loop:.2f} s, "
          f"{n:,} signals, total {ahead + loop:.2f} s", flush=True)
    secs, m = asyncio.run(stepwise(ens, series, args.stepwise))
    per = secs / max(m, 1)
    print(f"stepwise: {m:,} signals in {secs:.2f} s ({per * 1000:.2f} ms each); "
          f"{n:,} would take {per * n:.0f} s, {per * n / (ahead + loop):.0f}x the batched")


if __name__ == "__main__":
    main()
