"""The evaluation report: ``report.md`` and PNG plots (equity curves, drawdowns, calibration
diagrams, per-member accuracy over time)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from models.significance import DMResult, Interval, Verdicts

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


def _limits(rel: dict[str, list[tuple[float, float, int]]]) -> tuple[float, float]:
    pts = [v for r in rel.values() for p, o, _ in r for v in (p, o)]
    if not pts:
        return 0.0, 1.0
    lo, hi = min(pts), max(pts)
    pad = max(0.05, 0.1 * (hi - lo))
    return max(0.0, lo - pad), min(1.0, hi + pad)


def plot_reliability(rel: dict[str, list[tuple[float, float, int]]], path: Path) -> None:
    """The reliability diagram of the p that reaches Kelly, beside its earlier stages, with
    the number of test windows in each bin."""
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(7, 8), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1]})
    lo, hi = _limits(rel)
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8, label="perfect calibration")
    for name, pts in rel.items():
        style = {"linewidth": 2.2, "markersize": 5} if name == "ensemble" else {
            "linewidth": 0.9, "markersize": 3, "alpha": 0.8}
        ax.plot([p for p, _, _ in pts], [o for _, o, _ in pts], "o-", label=name, **style)
    ens = rel.get("ensemble", [])
    width = 0.8 * (hi - lo) / 10
    bx.bar([p for p, _, _ in ens], [n for _, _, n in ens], width=width)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_ylabel("observed frequency of target first")
    ax.set_title("Reliability of the ensemble's p (out of sample, timeouts excluded)")
    ax.legend(fontsize=7)
    bx.set_xlabel("predicted P(target before stop)")
    bx.set_ylabel("windows (final p)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_calibration(rel: dict[str, list[tuple[float, float, int]]], path: Path) -> None:
    names = list(rel)
    lo, hi = _limits(rel)
    cols = 4
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        pts = rel[name]
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.7)
        ax.plot([p for p, _, _ in pts], [o for _, o, _ in pts], "o-", markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Calibration: predicted P(target first) vs observed frequency (out of sample)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_accuracy(acc: dict[str, list[tuple[int, float]]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 5))
    for name, pts in acc.items():
        if name == "base_rate":
            continue
        width, alpha = (2.2, 1.0) if name == "ensemble" else (0.8, 0.7)
        ax.plot(np.asarray([_dt(t) for t, _ in pts]), [a for _, a in pts], label=name,
                linewidth=width, alpha=alpha)
    ax.axhline(0.5, color="k", linewidth=0.7)
    ax.set_ylabel("directional accuracy (30-day buckets)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tft_importance(imp: dict[str, Any], path: Path) -> None:
    """The TFT's variable-selection weights by feature, and its attention by candles back."""
    feats = sorted(imp["features"].items(), key=lambda kv: kv[1])
    att = imp["attention"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, max(4, 0.28 * len(feats))))
    ax.barh([k for k, _ in feats], [v for _, v in feats])
    ax.set_xlabel("mean variable-selection weight")
    ax.set_title("TFT variable importance (test windows, mean over folds)")
    bx.bar(range(len(att)), att)
    bx.set_xlabel("candles back from the decision")
    bx.set_ylabel("mean attention of the last step")
    bx.set_title("TFT temporal attention")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _importance_lines(meta: dict[str, Any], out: Path) -> list[str]:
    imp = meta.get("tft_importance")
    if not imp:
        return []
    plot_tft_importance(imp, out / "tft_importance.png")
    top = sorted(imp["features"].items(), key=lambda kv: -kv[1])[:5]
    return ["## What the TFT looks at", "",
            "Variable-selection weights (they sum to 1 over the features; uniform would be "
            f"{1 / len(imp['features']):.3f}), highest first: "
            + ", ".join(f"{k} {v:.3f}" for k, v in top)
            + f". The last step's attention on its own candle: {imp['attention'][0]:.3f}.", "",
            "![TFT importance](tft_importance.png)", ""]


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _ci(iv: Interval | None, scale: float = 1.0) -> str:
    if iv is None or iv.low != iv.low:
        return "n/a"
    return f"[{iv.low * scale:.2f}, {iv.high * scale:.2f}]"


def _sharpe(value: float, key: str, v: Verdicts) -> str:
    """The Sharpe, its 95 % interval and its bootstrap p-value of zero; bold when it differs
    from zero at 5 % after Holm's correction over every strategy in the report."""
    sh, _ = v.intervals.get(key, (None, None))
    p = f" p {sh.p_zero:.3f}" if sh is not None and sh.p_zero == sh.p_zero else ""
    text = f"{value:.2f} {_ci(sh)}{p}"
    return f"**{text}**" if v.sharpe_significant.get(key) else text


def _money_row(name: str, t: dict[str, Any], v: Verdicts, key: str | None = None) -> str:
    _, ret = v.intervals.get(key or name, (None, None))
    return (f"| {name} | {t['return_pct']:.2f} {_ci(ret, 100)} | "
            f"{_sharpe(t['sharpe'], key or name, v)} | "
            f"{t['max_drawdown_pct']:.2f} | {t['turnover']:.2f} | {t['fees_pct']:.2f} | "
            f"{t['trades']} |")


def _p(r: DMResult | None) -> str:
    if r is None or r.p_value != r.p_value:
        return "—"
    return f"{r.p_value:.3f} ({'worse' if r.statistic > 0 else 'better'})"


def _oof_lines(meta: dict[str, Any], metrics: dict[str, dict[str, float]]) -> list[str]:
    """One table: every predictor's out-of-fold metrics (inside the folds' training history,
    where the combiner was chosen) beside its test metrics."""
    oof: dict[str, dict[str, float]] = meta.get("oof_table", {})
    if not oof:
        return []

    def cells(m: dict[str, float] | None) -> str:
        if not m:
            return "n/a | n/a | n/a | n/a"
        return f"{m['log_loss']:.4f} | {m['brier']:.4f} | {m['ece']:.4f} | {m['accuracy']:.4f}"

    label = {"base_rate": "climatology (base rate)",
             "ensemble": "ensemble (deployed combiner)"}
    members = [n for n in oof if n not in meta["non_members"]]
    best = min(members, key=lambda n: oof[n]["log_loss"]) if members else None
    ens = oof.get("ensemble", {}).get("log_loss")
    holds = (best is not None and ens is not None and ens <= oof[best]["log_loss"] + 1e-12)
    return [
        "## Out of fold and test, every predictor",
        "",
        "Out of fold: inside each fold's training history, purged walk-forward parts each "
        "predicted by models that never saw them (early stopping and temperature on an inner "
        "validation part); these chose the combiner. Test: the fold's test part, predicted by "
        "the members retrained on the whole history. Timeouts excluded from both.",
        "",
        f"Deployed combiner per fold: {', '.join(meta['combiners'])}. Out-of-fold log-loss of "
        f"the deployed ensemble {_num(ens)} against the best member's "
        f"{_num(oof[best]['log_loss']) if best else 'n/a'} ({best}): "
        f"{'no worse' if holds else 'WORSE'}.",
        "",
        "| predictor | OOF log-loss | OOF Brier | OOF ECE | OOF accuracy | test log-loss "
        "| test Brier | test ECE | test accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {label.get(n, n)} | {cells(oof.get(n))} | {cells(metrics.get(n))} |"
          for n in [*members, *(n for n in oof if n in meta["non_members"])]),
        "",
    ]


def _perpetual_lines(meta: dict[str, Any], trading: dict[str, dict[str, Any]],
                     sizing: dict[str, dict[str, Any]]) -> list[str]:
    """On perpetuals: each traded predictor's and sizing rule's entries by side, its funding
    and its liquidations."""
    if not meta.get("perpetual"):
        return []
    sides = ("long and short: a short bets on P(lower barrier first) = 1 - p, its stop at "
             "the upper barrier" if meta.get("shorts") else "long only (strategy.shorts off)")
    rows = []
    for name, t in [*trading.items(), *sizing.items()]:
        if "long_entries" in t:
            rows.append(f"| {name} | {t['long_entries']} | {t['short_entries']} | "
                        f"{float(t['funding_paid']):.2f} | {float(t['funding_received']):.2f} | "
                        f"{t['liquidations']} | {t['liquidation_guard_rejections']} |")
        elif "funding_paid" in t:
            rows.append(f"| {name} (1x long) | n/a | n/a | {float(t['funding_paid']):.2f} | "
                        f"{float(t['funding_received']):.2f} | 0 | n/a |")
    return [
        "## Perpetuals: sides, funding and the liquidation guard",
        "",
        f"The data are perpetual futures, traded {sides}; funding is booked at each funding "
        "time (size x mark x rate, a positive rate: longs pay) and is in every return above. "
        "Entries whose stop sits too near the liquidation price are refused by the guard.",
        "",
        "| predictor or rule | long entries | short entries | funding paid | funding received "
        "| liquidations | guard refusals |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def write_report(out: Path, meta: dict[str, Any], metrics: dict[str, dict[str, float]],
                 trading: dict[str, dict[str, Any]], acc: dict[str, list[tuple[int, float]]],
                 rel: dict[str, list[tuple[float, float, int]]],
                 sizing: dict[str, dict[str, Any]], stages: dict[str, dict[str, float]],
                 calibration: dict[str, Any], v: Verdicts) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plot_equity({**trading, "buy_and_hold": sizing["buy_and_hold"]}, out / "equity.png")
    plot_calibration(rel, out / "calibration.png")
    plot_reliability({k: v for k, v in rel.items() if k.startswith("ensemble")},
                     out / "reliability.png")
    plot_accuracy(acc, out / "accuracy_over_time.png")
    lines = [
        "# Walk-forward out-of-sample evaluation",
        "",
        f"**Verdict.** {v.sentence()}",
        "",
        f"- data: {', '.join(meta['symbols'])} {meta['timeframe']}",
        f"- the bet every predictor prices: {meta['barrier']} (triple-barrier labels from the "
        f"risk settings); break-even p before costs {meta['break_even']:.4f}",
        f"- preset: {meta['preset']} (lookback {meta['lookback']}, at most "
        f"{meta['train_windows']:,} training windows per member, {meta['epochs']} epochs); "
        f"round-trip cost {meta['cost']:.4f} (fees and slippage)",
        f"- folds: {meta['folds']}, expanding (each trains on all history before its "
        "validation part); their test windows tile the data after the first training span: "
        f"{meta['test_from']} → {meta['test_to']} (UTC)",
        f"- coverage: the test windows cover {meta['coverage']['test_days']:.0f} of the "
        f"data's {meta['coverage']['file_days']:.0f} days "
        f"({meta['coverage']['share']:.1%}); the rest trained and validated the models",
        "- in each fold, members first predicted purged out-of-fold parts of its training "
        "history, which chose the combiner; then they were retrained on that whole history, "
        "calibrated on its last validation part and scored on the test part; nothing was "
        "tuned on a test part",
        f"- classification metrics are on the {calibration['n']} test windows whose outcome was "
        f"a touch of the target or the stop; {calibration['timeouts']} timeouts (neither "
        "touched within the horizon) are excluded",
        "- trading metrics come from the engine (paper broker, full risk manager, fees and "
        "slippage) with the ensemble strategy for every predictor: enter when p beats the "
        "break-even with costs, exit below the cost-free break-even or at the time limit; "
        f"Kelly {meta['kelly_fraction']}, at most {meta['max_risk_per_trade']:.2%} of equity "
        "at risk per trade",
        "",
        "| fold | test from | test to | n | ensemble log-loss | best member log-loss |",
        "|---:|---|---|---:|---:|---:|",
        *(
            f"| {r['fold']} | {_dt(r['from']):%Y-%m-%d} | {_dt(r['to']):%Y-%m-%d} | {r['n']} | "
            f"{_num(r['ensemble'])} | {_num(r['best_member_log_loss'])} ({r['best_member']}) |"
            for r in meta["folds_table"]
        ),
        "",
        *_oof_lines(meta, metrics),
        "## Sizing: Kelly against fixed sizing",
        "",
        "The ensemble's out-of-sample p through the engine on the same test windows and the "
        "same entries and exits; only the sizing rule differs (the uncalibrated row also "
        "enters on its own p). Buy & hold: equal weights bought at each test window's first "
        "open and sold at its last close, from prices, with fees and slippage both ways and no "
        "stops. always_flat never trades.",
        "",
        f"With the risk settings as they are (at most {meta['max_risk_per_trade']:.2%} of "
        f"equity at risk per trade, {meta['max_exposure_symbol']:.0%} of equity per symbol, "
        f"{meta['max_exposure_total']:.0%} in all): where a cap binds, rules that ask for more "
        "get the same size.",
        "",
        f"Intervals: 95 % circular block bootstrap of the per-candle returns; p: the bootstrap "
        f"p-value of a zero Sharpe. This report tests {len(v.intervals)} strategies on the "
        "same test windows, so about one raw 95 % interval in twenty excludes zero by chance: "
        "a Sharpe is **bold** only where it differs from zero at 5 % after Holm's correction "
        "over all of them.",
        "",
        "| rule | net return % [95 % CI] | Sharpe [95 % CI] p | max DD % | turnover (x equity) "
        "| fees % of equity | trades |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(_money_row(name, t, v) for name, t in sizing.items() if "caps lifted" not in name),
        "",
        "The same rules with those three caps lifted (20 % risk per trade, 100 % of equity "
        "per symbol and in all; spot still cannot spend more cash than it has), to show what "
        "the sizing rule itself does:",
        "",
        "| rule | net return % [95 % CI] | Sharpe [95 % CI] p | max DD % | turnover (x equity) "
        "| fees % of equity | trades |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            _money_row(name.replace(" (caps lifted)", ""), t, v, name)
            for name, t in sizing.items()
            if "caps lifted" in name
        ),
        "",
        *_perpetual_lines(meta, trading, sizing),
        "## Calibration of the p that reaches Kelly",
        "",
        f"ECE of the final p on the test windows: **{calibration['ece_final']:.4f}** "
        f"(n = {calibration['n']}).",
        "",
        "| stage | ECE | log-loss | Brier | accuracy |",
        "|---|---:|---:|---:|---:|",
        f"| final: combined, re-weighted online keeping its moments (traded) | "
        f"{metrics['ensemble']['ece']:.4f} | {metrics['ensemble']['log_loss']:.4f} | "
        f"{metrics['ensemble']['brier']:.4f} | {metrics['ensemble']['accuracy']:.4f} |",
        *(
            f"| {name} | {m['ece']:.4f} | {m['log_loss']:.4f} | {m['brier']:.4f} | "
            f"{m['accuracy']:.4f} |"
            for name, m in stages.items()
        ),
        "",
        "![reliability diagram](reliability.png)",
        "",
        "## Predictors",
        "",
        "Diebold-Mariano tests on the per-sample log-loss (autocorrelation-robust over the "
        "horizon's overlap; p-values two-sided, '(better)' when the predictor's loss is the "
        f"lower): against the base rate, and against the best baseline ({v.best_baseline}). "
        "**Bold**: significantly better than the base rate at 5 % after Holm's correction. "
        "Return and Sharpe intervals: 95 % circular block bootstrap of the per-candle "
        "returns, with the bootstrap p-value of a zero Sharpe.",
        "",
        "| predictor | accuracy | log-loss | Brier | ECE | n | DM p vs base rate "
        "| DM p vs best baseline | net return % [95 % CI] | Sharpe [95 % CI] p | max DD % "
        "| trades |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in metrics.items():
        t = trading.get(name, {})
        _, ret = v.intervals.get(name, (None, None))
        shown = f"**{name}**" if v.beats_base.get(name) else name
        lines.append(
            f"| {shown} | {m['accuracy']:.4f} | {m['log_loss']:.4f} | {m['brier']:.4f} | "
            f"{m['ece']:.4f} | {m['n']} | {_p(v.dm_base.get(name))} | "
            f"{_p(v.dm_best.get(name))} | {t.get('return_pct', float('nan')):.2f} "
            f"{_ci(ret, 100)} | {_sharpe(t.get('sharpe', float('nan')), name, v)} | "
            f"{t.get('max_drawdown_pct', float('nan')):.2f} | {t.get('trades', '')} |"
        )
    lines += [
        "",
        "Accuracy (p > 0.5 against the outcome) matters less here than calibration "
        "and log-loss: the bet pays more than it risks, so a p below 0.5 can still be "
        "worth a trade. base_rate forecasts the train part's share of target-first "
        "outcomes every time: the no-skill bar. A model is honest when it is measured as "
        "it came out, whatever the sign.",
        "",
        *_importance_lines(meta, out),
        "## Plots",
        "",
        "![equity and drawdown](equity.png)",
        "",
        "![calibration](calibration.png)",
        "",
        "![accuracy over time](accuracy_over_time.png)",
        "",
        f"Elapsed (up to the report): {meta['elapsed']}.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
