"""Ensemble inference latency: the bare batched forward of all members, and the end-to-end
decision (candle in -> features -> ensemble -> Signal) through the engine's signal source.

    python bench/inference.py [--devices cpu,cuda] [--modes eager,graphs,compile]
                              [--symbols 1,50] [--iters 200] [--ensemble PATH/ensemble.json]

Every (device, mode, symbols) row comes from the same process, so the ratios between rows
are taken in one run. ``graphs`` replays the forward from CUDA graphs with the batch padded
to a power-of-two bucket (models/forward.py); on the CPU only ``eager`` runs.

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
from models.ensemble import Ensemble  # noqa: E402
from models.ensemble_source import LIVE_WARMUP, EnsembleSignalSource  # noqa: E402
from models.features import FEATURE_NAMES  # noqa: E402
from models.labels import BarrierSpec  # noqa: E402
from models.members import REGISTRY, MemberConfig  # noqa: E402


def build(device: str, mode: str, path: str | None) -> Ensemble:
    compile, graphs = mode == "compile", mode == "graphs"
    if path:
        trained = Ensemble.trained_barrier(Path(path))
        if trained is None:
            raise SystemExit(f"{path} predates triple-barrier training: retrain it")
        return Ensemble.load(Path(path), None, trained, device=device, compile=compile,
                             cuda_graphs=graphs)
    torch.manual_seed(0)
    members = [REGISTRY[n](MemberConfig(len(FEATURE_NAMES), 32, 32)).eval() for n in REGISTRY]
    return Ensemble("bench", members, [1.0] * len(members), np.full(len(members), 0.1), 0.0,
                    32, BarrierSpec(2.0, 3.0, 24), device=device, compile=compile,
                    cuda_graphs=graphs)


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

    def timed_raw(x: np.ndarray, cross: bool = True):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = raw(x, cross)
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


async def startup(ens: Ensemble, n_sym: int, history: int = LIVE_WARMUP) -> float:
    """Seconds from the first live candle to its signals after a start with ``history``
    candles of warm-up: the online weights' rebuild (models/ensemble_source.py) plus one
    decision."""
    src = EnsembleSignalSource(ens, "1h", threads=torch.get_num_threads())
    hist = {f"S{i}/USDT": synthetic_candles(f"S{i}/USDT", "1h", 0, history + 1, seed=i)
            for i in range(n_sym)}
    src.warm(sorted((c for h in hist.values() for c in h[:history]), key=lambda c: c.ts))
    t = time.perf_counter()
    await src.on_candles([h[history] for h in hist.values()])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", default="eager,graphs")
    ap.add_argument("--symbols", default="1,50")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-startup", action="store_true", help="skip the restart timing")
    ap.add_argument("--ensemble")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu_name = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), cpu {cpu_name}"
          + (f", gpu {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"{'device':>6} {'mode':>7} {'symbols':>7} {'forward p50':>12} {'p99':>8} "
          f"{'decision p50':>13} {'p99':>8} {'ratio p50':>10} {'setup':>7}")
    rows = []
    for device in args.devices.split(","):
        for mode in args.modes.split(","):
            if device == "cpu" and mode != "eager":
                continue  # CUDA graphs and reduce-overhead compilation need a GPU
            for n in (int(s) for s in args.symbols.split(",")):
                rows.append(one(device, mode, n, args))
    print(json.dumps(rows))


def one(device: str, mode: str, n: int, args: argparse.Namespace) -> dict[str, object]:
    ens = build(device, mode, args.ensemble)
    t0 = time.perf_counter()
    ens.forward.prepare(n, ens.lookback, len(FEATURE_NAMES))  # capture the buckets up to n
    setup = time.perf_counter() - t0
    x = np.random.default_rng(0).normal(size=(n, ens.lookback, len(FEATURE_NAMES)))
    x = x.astype(np.float32)
    for _ in range(20):
        ens.raw(x)
    fwd = []
    for _ in range(args.iters):
        t = time.perf_counter()
        ens.raw(x)
        fwd.append(time.perf_counter() - t)
    e2e, bare = asyncio.run(decisions(ens, n, args.iters))
    ratio = statistics.median(e2e) / statistics.median(bare)
    print(f"{device:>6} {mode:>7} {n:>7} {pct(fwd, 50):>10.2f}ms {pct(fwd, 99):>6.2f}ms "
          f"{pct(e2e, 50):>11.2f}ms {pct(e2e, 99):>6.2f}ms {ratio:>10.2f} {setup:>6.1f}s",
          flush=True)
    row: dict[str, object] = {
        "device": device, "mode": mode, "symbols": n,
        "forward_p50_ms": pct(fwd, 50), "forward_p99_ms": pct(fwd, 99),
        "decision_p50_ms": pct(e2e, 50), "decision_p99_ms": pct(e2e, 99),
        "ratio_p50": ratio, "setup_s": setup,
    }
    if not args.no_startup:
        start = asyncio.run(startup(ens, n))
        print(f"{'':>22} first decision after a start (rebuilding the online weights from "
              f"{LIVE_WARMUP:,} candles of history): {start:.2f}s", flush=True)
        row["startup_s"] = start
    return row


if __name__ == "__main__":
    main()
