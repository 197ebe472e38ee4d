"""The evaluation report: ``report.md`` and PNG plots (equity curves, drawdowns, calibration
diagrams, per-member accuracy over time)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def plot_equity(trading: dict[str, dict[str, Any]], path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    for name, t in trading.items():
        curve = t.get("equity") or []
        if not curve:
            continue
        xs = [_dt(ts) for ts, _ in curve]
        eq = [e for _, e in curve]
        style = {"linewidth": 2.2} if name == "ensemble" else {"linewidth": 0.9, "alpha": 0.8}
        ax1.plot(xs, eq, label=name, **style)
        peak, dd = float("-inf"), []
        for e in eq:
            peak = max(peak, e)
            dd.append(100 * (e / peak - 1) if peak > 0 else 0.0)
        ax2.plot(xs, dd, **style)
    ax1.set_ylabel("equity (quote)")
    ax1.set_title("Out-of-sample equity, net of fees and slippage, through the engine")
    ax1.legend(fontsize=7, ncol=3)
    ax2.set_ylabel("drawdown %")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_calibration(rel: dict[str, list[tuple[float, float, int]]], path: Path) -> None:
    names = list(rel)
    cols = 4
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        pts = rel[name]
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.7)
        ax.plot([p for p, _, _ in pts], [o for _, o, _ in pts], "o-", markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0.3, 0.7)
        ax.set_ylim(0.3, 0.7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Calibration: predicted P(up) vs observed frequency (out of sample)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_accuracy(acc: dict[str, list[tuple[int, float]]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 5))
    for name, pts in acc.items():
        if name in ("always_flat", "buy_and_hold"):
            continue
        style = {"linewidth": 2.2} if name == "ensemble" else {"linewidth": 0.8, "alpha": 0.7}
        ax.plot([_dt(t) for t, _ in pts], [a for _, a in pts], label=name, **style)
    ax.axhline(0.5, color="k", linewidth=0.7)
    ax.set_ylabel("directional accuracy (30-day buckets)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, meta: dict[str, Any], metrics: dict[str, dict[str, float]],
                 trading: dict[str, dict[str, Any]], acc: dict[str, list[tuple[int, float]]],
                 rel: dict[str, list[tuple[float, float, int]]]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plot_equity(trading, out / "equity.png")
    plot_calibration(rel, out / "calibration.png")
    plot_accuracy(acc, out / "accuracy_over_time.png")
    lines = [
        "# Walk-forward out-of-sample evaluation", "",
        f"- data: {', '.join(meta['symbols'])} {meta['timeframe']}",
        f"- preset: {meta['preset']} (lookback {meta['lookback']}, horizon {meta['horizon']} "
        f"candles, cost threshold {meta['cost']})",
        f"- folds: {meta['folds']}, test windows {meta['test_from']} → {meta['test_to']} (UTC)",
        "- members trained on each fold's train part, calibrated on its validation part, "
        "scored on its test part; nothing was tuned on a test part",
        "- classification metrics are on samples whose forward move exceeds the cost "
        "threshold; trading metrics come from the engine (paper broker, full risk manager, "
        "fees and slippage) with the same rule for every predictor: long above 0.5, flat below",
        "", "## Results", "",
        "| predictor | accuracy | log-loss | Brier | ECE | n | net return % | Sharpe | max DD % | trades |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in metrics.items():
        t = trading.get(name, {})
        lines.append(
            f"| {name} | {m['accuracy']:.4f} | {m['log_loss']:.4f} | {m['brier']:.4f} | "
            f"{m['ece']:.4f} | {m['n']} | {t.get('return_pct', float('nan')):.2f} | "
            f"{t.get('sharpe', float('nan')):.2f} | {t.get('max_drawdown_pct', float('nan')):.2f} | "
            f"{t.get('trades', '')} |")
    lines += ["", "Accuracy near 50% is what honest crypto forecasting looks like; a model "
              "that beats the baselines by a point is doing well. always_flat has no "
              "direction (its accuracy is the share of up moves it happens to match at 0.5).",
              "", "## Plots", "", "![equity and drawdown](equity.png)", "",
              "![calibration](calibration.png)", "", "![accuracy over time](accuracy_over_time.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
