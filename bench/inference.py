"""Ensemble inference latency: the bare batched forward of all members, and the end-to-end
decision (candle in -> features -> ensemble -> Signal) through the engine's signal source.

    python bench/inference.py [--device cpu|cuda] [--symbols 1,50] [--iters 200]
                              [--ensemble PATH/ensemble.json]

It also times the first decision after a start, which includes rebuilding the online
weights from 1,000 candles of warm-up history.

Without --ensemble, it builds all 12 members at the quick preset's size (hidden 32,
lookback 32) with random weights. Latency does not depend on the weights.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bot.domain import Candle  # noqa: E402
from bot.sim.binance import synthetic_candles  # noqa: E402
from models.ensemble import Ensemble, EnsembleSignalSource  # noqa: E402
from models.features import FEATURE_NAMES  # noqa: E402
from models.labels import BarrierSpec  # noqa: E402
from models.members import REGISTRY, MemberConfig  # noqa: E402


def build(device: str, compile: bool, path: str | None) -> Ensemble:
    if path:
        trained = Ensemble.trained_barrier(Path(path))
        if trained is None:
            raise SystemExit(f"{path} predates triple-barrier training: retrain it")
        return Ensemble.load(Path(path), None, trained, device=device, compile=compile)
    torch.manual_seed(0)
    members = [REGISTRY[n](MemberConfig(len(FEATURE_NAMES), 32, 32)).eval() for n in REGISTRY]
    return Ensemble("bench", members, [1.0] * len(members), np.full(len(members), 0.1), 0.0,
                    32, BarrierSpec(2.0, 3.0, 24), device=device, compile=compile)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1000


async def decisions(ens: Ensemble, n_sym: int, iters: int) -> tuple[list[float], list[float]]:
    """End-to-end: a new closed candle per symbol -> signals, and the bare forward inside."""
    src = EnsembleSignalSource(ens, "1h", threads=torch.get_num_threads())
    hist = {f"S{i}/USDT": synthetic_candles(f"S{i}/USDT", "1h", 0, src.keep + iters + 5, seed=i)
            for i in range(n_sym)}
    for k in range(src.keep):
        await src.on_candles([h[k] for h in hist.values()])
    bare: list[float] = []
    raw = ens.raw

    def timed_raw(x: np.ndarray):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = raw(x)
        bare.append(time.perf_counter() - t)
        return out

    ens.raw = timed_raw  # type: ignore[method-assign]
    e2e = []
    for k in range(src.keep, src.keep + iters):
        batch: list[Candle] = [h[k] for h in hist.values()]
        t = time.perf_counter()
        sigs = await src.on_candles(batch)
        e2e.append(time.perf_counter() - t)
        assert len(sigs) == n_sym
    ens.raw = raw  # type: ignore[method-assign]
    return e2e, bare


async def startup(ens: Ensemble, n_sym: int, history: int = 1000) -> float:
    """Seconds from the first live candle to its signals after a start with ``history``
    candles of warm-up: the online weights' rebuild (models/ensemble.py) plus one decision."""
    src = EnsembleSignalSource(ens, "1h", threads=torch.get_num_threads())
    hist = {f"S{i}/USDT": synthetic_candles(f"S{i}/USDT", "1h", 0, history + 1, seed=i)
            for i in range(n_sym)}
    src.warm(sorted((c for h in hist.values() for c in h[:history]), key=lambda c: c.ts))
    t = time.perf_counter()
    await src.on_candles([h[history] for h in hist.values()])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--symbols", default="1,50")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--ensemble")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ens = build(args.device, args.compile, args.ensemble)
    device_name = (torch.cuda.get_device_name() if args.device == 'cuda'
                   else platform.processor() or platform.machine())
    print(
        f"device {args.device} ({device_name}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{len(ens.names)} members, compile={args.compile}"
    )
    print(
        f"{'symbols':>7} {'forward p50':>12} {'p99':>8} {'decision p50':>13} {'p99':>8} "
        f"{'ratio p50':>10}"
    )
    rows = []
    for n in (int(s) for s in args.symbols.split(",")):
        x = np.random.default_rng(0).normal(size=(n, 32, len(FEATURE_NAMES))).astype(np.float32)
        for _ in range(20):
            ens.raw(x)
        fwd = []
        for _ in range(args.iters):
            t = time.perf_counter()
            ens.raw(x)
            fwd.append(time.perf_counter() - t)
        e2e, bare = asyncio.run(decisions(ens, n, args.iters))
        ratio = statistics.median(e2e) / statistics.median(bare)
        print(
            f"{n:>7} {pct(fwd, 50):>10.2f}ms {pct(fwd, 99):>6.2f}ms {pct(e2e, 50):>11.2f}ms "
            f"{pct(e2e, 99):>6.2f}ms {ratio:>10.2f}"
        )
        start = asyncio.run(startup(ens, n))
        print(
            f"{'':>7} first decision after a start (rebuilding the online weights from "
            f"1,000 candles of history): {start:.2f}s"
        )
        rows.append(
            {
                "symbols": n,
                "forward_p50_ms": pct(fwd, 50),
                "forward_p99_ms": pct(fwd, 99),
                "decision_p50_ms": pct(e2e, 50),
                "decision_p99_ms": pct(e2e, 99),
                "ratio_p50": ratio,
                "startup_s": start,
            }
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
