"""Training time per member per epoch, and the whole quick preset, on real data.

    python bench/train.py [--preset quick] [--pairs BTC,ETH] [--device cpu]

Trains every member the way `stackbot train` does (walk-forward, early stopping,
calibration, meta-learner) on ../shared/data/binance-spot-1h, and prints the seconds per epoch,
the epochs run, and the out-of-sample accuracy of each member.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bot.feeds.files import load_candle_file  # noqa: E402
from models.dataset import symbol_data  # noqa: E402
from models.members import REGISTRY  # noqa: E402
from models.train import PRESETS, barrier_of, train_ensemble  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "binance-spot-1h"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--pairs", default="BTC,ETH")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent: the benchmark needs ../shared/data")
    t0 = time.perf_counter()
    cfg = replace(PRESETS[args.preset], device=args.device)
    data = [symbol_data(load_candle_file(DATA / f"{p}_USDT-1h.json", "1h"), barrier_of(cfg))
            for p in args.pairs.split(",")]
    prep = time.perf_counter() - t0
    marks: dict[str, float] = {}

    def on(name: str, what: str) -> None:
        marks[f"{name}:{what}"] = time.perf_counter()

    t1 = time.perf_counter()
    res = train_ensemble(data, cfg, list(REGISTRY), on)
    total = time.perf_counter() - t1
    print(f"preset {args.preset}, pairs {args.pairs}, device {args.device}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; features {prep:.1f}s")
    print(
        f"{'member':<15} {'s/epoch':>8} {'epochs':>6} {'wall s':>7} {'test acc':>8} "
        f"{'test logloss':>12}"
    )
    for m in res.members:
        wall = marks[f"{m.name}:done"] - marks[f"{m.name}:start"]
        c = m.metrics["test_calibrated"]
        print(
            f"{m.name:<15} {m.metrics['seconds_per_epoch']:>8.2f} {m.metrics['epochs']:>6} "
            f"{wall:>7.1f} {c['accuracy']:>8.3f} {c['log_loss']:>12.4f}"
        )
    t = res.meta_metrics["test"]
    print(f"{'meta':<15} {'':>8} {'':>6} {'':>7} {t['accuracy']:>8.3f} {t['log_loss']:>12.4f}")
    print(f"all 13 (12 members + meta): {total:.1f}s training, {total + prep:.1f}s with features")


if __name__ == "__main__":
    main()
