"""``stackbot evaluate``: a walk-forward out-of-sample report for every member, every combiner
candidate, the deployed ensemble and four baselines (the base rate, momentum, logistic
regression and LightGBM on the same features, ``models/baselines.py``), and a sizing
comparison of the ensemble's p under Kelly and fixed-fractional rules.

The folds expand: their test parts tile the file after the first training span and its
validation part (``models/windows.expanding_folds``), and each fold trains on all history
before its validation part, subsampled to the preset's number of training windows.

Every predictor forecasts the triple-barrier outcome the risk settings define: P(target
before stop within the horizon). For each of the ``folds`` walk-forward folds, the members
first predict purged out-of-fold parts inside that fold's training history, which choose the
combiner (``models/oof.py``); then they are trained on the fold's whole history, calibrated on
its last validation rows, and scored on its test part. The ensemble's p is the one that
reaches Kelly live: combined by the chosen combiner, and re-weighted online as the outcomes
come in, keeping the out-of-fold logit's moments.
Nothing is tuned on a test part. Every predictor's out-of-sample p then trades through the
engine (replay feed, paper broker, full risk manager, the ensemble strategy). The output is
``report.md`` plus PNG plots.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from bot.domain import Candle, CandleSeries, Gap, OrderIntent, PromotedModel, Signal
from bot.ports import PortfolioView
from models.baselines import baseline_predictions
from models.calibrate import reliability, report, sigmoid
from models.dataset import SymbolData, evenly, reference_timeline, split_by_time, symbol_data
from models.features import FEATURE_NAMES
from models.labels import BarrierSpec
from models.members.tft import TemporalFusionTransformer
from models.oof import choose_combiner
from models.train import TrainConfig, member_oof, stack_members, train_member
from models.windows import expanding_folds

# the ensemble's p at its stages, for the calibration table (not traded as predictors)
STAGES = ("ensemble_static_stacker", "ensemble_reweighted_unconstrained", "ensemble_uncalibrated")


@dataclass
class OOS:
    """Out-of-sample predictions, concatenated over folds."""

    symbol: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    up: list[float] = field(default_factory=list)
    labeled: list[bool] = field(default_factory=list)
    fold: list[int] = field(default_factory=list)
    p: dict[str, list[float]] = field(default_factory=dict)
    stages: dict[str, list[float]] = field(default_factory=dict)
    # the out-of-fold predictions inside each fold's training history (models/oof.py)
    oof_up: list[float] = field(default_factory=list)
    oof_labeled: list[bool] = field(default_factory=list)
    oof_p: dict[str, list[float]] = field(default_factory=dict)
    combiners: list[str] = field(default_factory=list)  # the deployed combiner of each fold
    # the TFT's variable-selection weights [F] and last-step attention [L], one per fold
    tft_importance: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def add(self, name: str, values: np.ndarray) -> None:
        self.p.setdefault(name, []).extend(float(v) for v in values)

    def add_oof(self, name: str, values: np.ndarray) -> None:
        self.oof_p.setdefault(name, []).extend(float(v) for v in values)

    def add_stage(self, name: str, values: np.ndarray) -> None:
        self.stages.setdefault(name, []).extend(float(v) for v in values)


class PrecomputedSource:
    """Replays one predictor's out-of-sample P(up) through the engine."""

    device = "cpu"  # computed already: replaying is a lookup

    def __init__(self, name: str, table: dict[tuple[str, int], tuple[float, float]]) -> None:
        self.name = name
        self.model_version = f"eval:{name}"
        self.table = table

    def on_gap(self, gap: Gap) -> None:
        return None

    def warm(self, candles: Sequence[Candle]) -> None:
        return None  # the predictions are computed already

    def swap(self, model: PromotedModel) -> bool:
        return False

    async def on_candles(self, candles: Sequence[Candle]) -> list[Signal]:
        out = []
        for c in candles:
            hit = self.table.get((c.symbol, c.ts))
            if hit is not None:
                out.append(
                    Signal(
                        c.symbol,
                        c.ts,
                        hit[0],
                        0.0,
                        self.name,
                        self.model_version,
                        price=c.close,
                        atr=hit[1],
                    )
                )
        return out


class WithoutProbability:
    """Wraps a strategy and withholds its probability from risk: the same entries and exits,
    sized fixed-fractional (``risk.fixed_risk_per_trade``) instead of by Kelly."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def decide(self, signal: Signal, portfolio: PortfolioView) -> OrderIntent | None:
        intent = self.inner.decide(signal, portfolio)
        if intent is None or intent.confidence is None:
            return intent
        return replace(intent, confidence=None)


def _candidate_key(name: str) -> str:
    """A combiner candidate's row name, the same in every fold ("best_member:tcn" and
    "best_member:gru" are one row: the best member of each fold)."""
    return "combiner_" + name.split(":")[0]


def out_of_sample(
    data: Sequence[SymbolData],
    cfg: TrainConfig,
    members: Sequence[str],
    folds: int,
    on_step: Callable[[int, int, str], None] | None = None,
) -> OOS:
    """``on_step(fold, folds, what)`` after each member's training (``what`` its name, or its
    name and "oof" for an out-of-fold model) and after each fold's combining and baselines
    (``what`` "stacking")."""
    ref = reference_timeline(data)
    embargo = cfg.lookback + cfg.horizon
    fold_list = expanding_folds(len(ref), cfg.train_rows, cfg.val_rows, embargo, folds)
    if not fold_list:
        raise ValueError(
            f"not enough history for {folds} walk-forward fold(s): {len(ref)} "
            f"candles, the first training span and validation take "
            f"{cfg.train_rows + cfg.val_rows + 2 * embargo}"
        )
    oos = OOS()
    for k, split in enumerate(fold_list):
        def step(name: str, what: str, k: int = k) -> None:
            if on_step and what == "done":
                on_step(k, len(fold_list), name)

        oof = member_oof(data, split, ref, cfg, members, step,
                         baselines=lambda p: baseline_predictions(data, p, cfg.horizon))
        choice = choose_combiner(oof)
        parts = split_by_time(data, split, ref, cfg.lookback, cfg.horizon, cfg.max_train_samples)
        results = []
        for name in members:
            results.append(train_member(name, data, parts, cfg))
            if on_step:
                on_step(k, len(fold_list), name)
        test = parts.test
        st = stack_members(data, parts, results, choice)
        offset = 0
        for d, n in zip(data, parts.sizes["test"], strict=False):
            oos.symbol += [d.symbol] * n
            oos.ts += d.ts[test.t[offset : offset + n]].tolist()
            offset += n
        oos.up += test.up.astype(float).tolist()
        oos.labeled += test.labeled.astype(bool).tolist()
        oos.fold += [k] * len(test)
        oos.oof_up += oof.up.astype(float).tolist()
        oos.oof_labeled += oof.labeled.astype(bool).tolist()
        for r in results:
            oos.add(r.name, sigmoid(r.test_logits / r.temperature))
            oos.add_oof(r.name, oof.member_p(r.name))
            if isinstance(r.model, TemporalFusionTransformer) and len(test):
                sample = test.x[evenly(np.arange(len(test)), 4096)]
                w, a = r.model.interpret(torch.as_tensor(sample))
                oos.tft_importance.append((w.numpy(), a.numpy()))
        oos.add("ensemble", st.p_test)
        oos.add_oof("ensemble", st.p_oof)
        oos.combiners.append(choice.deployed.name)
        for name, p in st.candidates_test.items():
            oos.add(_candidate_key(name), p)
            oos.add_oof(_candidate_key(name), choice.oof_p[name])
        oos.add_stage("ensemble_static_stacker", st.p_test_static)
        oos.add_stage("ensemble_reweighted_unconstrained", st.p_test_reweighted)
        # no temperature, no combiner, no re-weighting: the members' raw probabilities
        oos.add_stage(
            "ensemble_uncalibrated", np.mean([sigmoid(r.test_logits) for r in results], axis=0)
        )
        for name, p in baseline_predictions(data, parts, cfg.horizon).items():
            oos.add(name, p)
            oos.add_oof(name, oof.extra[name])
        if on_step:
            on_step(k, len(fold_list), "stacking")
    return oos


def metrics_table(oos: OOS, stages: bool = False) -> dict[str, dict[str, float]]:
    """Classification metrics on the test windows with a direction (timeouts excluded)."""
    lab = np.array(oos.labeled)
    y = np.array(oos.up)[lab]
    src = oos.stages if stages else oos.p
    return {name: report(np.array(p)[lab], y) for name, p in src.items()}


def tft_importance(oos: OOS) -> dict[str, Any] | None:
    """The TFT's variable importance by feature and its attention by step back from the
    decision, averaged over the folds (None without a TFT member)."""
    if not oos.tft_importance:
        return None
    w = np.mean([x for x, _ in oos.tft_importance], axis=0)
    a = np.mean([y for _, y in oos.tft_importance], axis=0)
    return {"features": dict(zip(FEATURE_NAMES, map(float, w), strict=True)),
            "attention": [float(v) for v in a[::-1]]}  # [0] = the decision's own candle


def oof_table(oos: OOS) -> dict[str, dict[str, float]]:
    """The same metrics on the out-of-fold windows inside the folds' training histories: what
    chose each fold's combiner (never the test windows)."""
    lab = np.array(oos.oof_labeled, dtype=bool)
    y = np.array(oos.oof_up)[lab]
    return {name: report(np.array(p)[lab], y) for name, p in oos.oof_p.items()}


def signal_tables(
    oos: OOS, data: Sequence[SymbolData]
) -> dict[str, dict[tuple[str, int], tuple[float, float]]]:
    """Per predictor and ensemble stage: (symbol, open time) -> (p, ATR in price units)."""
    by_symbol = {d.symbol: d for d in data}
    atr_at = [
        float(by_symbol[s].atr[np.searchsorted(by_symbol[s].ts, t)])
        for s, t in zip(oos.symbol, oos.ts, strict=False)
    ]
    return {
        name: {(s, t): (p, a) for s, t, p, a in zip(oos.symbol, oos.ts, ps, atr_at, strict=False)}
        for name, ps in {**oos.p, **oos.stages}.items()
    }


def accuracy_over_time(
    oos: OOS, bucket_ms: int = 30 * 86_400_000
) -> dict[str, list[tuple[int, float]]]:
    lab = np.array(oos.labeled)
    ts = np.array(oos.ts)[lab]
    y = np.array(oos.up)[lab]
    buckets = ts // bucket_ms
    out: dict[str, list[tuple[int, float]]] = {}
    for name, ps in oos.p.items():
        p = np.array(ps)[lab]
        out[name] = [
            (int(b * bucket_ms), float(((p[buckets == b] > 0.5) == (y[buckets == b] > 0.5)).mean()))
            for b in np.unique(buckets)
        ]
    return out


def load(series: Sequence[CandleSeries], barrier: BarrierSpec) -> list[SymbolData]:
    """Features and triple-barrier labels per symbol (with the ATR the risk manager sizes
    with)."""
    return [symbol_data(s, barrier) for s in series]


def reliability_data(oos: OOS) -> dict[str, list[tuple[float, float, int]]]:
    lab = np.array(oos.labeled)
    y = np.array(oos.up)[lab]
    return {
        name: reliability(np.array(p)[lab], y)
        for name, p in {**oos.p, **oos.stages}.items()
        if name != "base_rate"
    }


def fold_table(oos: OOS, members: Sequence[str]) -> list[dict[str, Any]]:
    """One row per walk-forward fold: its test dates, samples with a direction, and the
    log-loss of the ensemble and of the member that is best over all folds."""
    lab = np.array(oos.labeled)
    fold = np.array(oos.fold)
    ts = np.array(oos.ts)
    y = np.array(oos.up)
    scored = {n: report(np.array(oos.p[n])[lab], y[lab])["log_loss"] for n in members if n in oos.p}
    best = min(scored, key=scored.__getitem__) if scored else None
    rows = []
    for k in sorted(set(oos.fold)):
        sel = (fold == k) & lab
        row: dict[str, Any] = {
            "fold": k + 1,
            "from": int(ts[fold == k].min()),
            "to": int(ts[fold == k].max()),
            "n": int(sel.sum()),
            "ensemble": report(np.array(oos.p["ensemble"])[sel], y[sel])["log_loss"]
            if sel.any()
            else None,
            "best_member": best,
        }
        row["best_member_log_loss"] = (
            report(np.array(oos.p[best])[sel], y[sel])["log_loss"] if best and sel.any() else None
        )
        rows.append(row)
    return rows


def coverage(oos: OOS, series: Sequence[CandleSeries], step_ms: int) -> dict[str, float]:
    """How much of the data the test windows cover: days, and the share of the file's span."""
    first = min(s.candles[0].ts for s in series)
    last = max(s.candles[-1].ts for s in series) + step_ms
    ts = np.array(oos.ts)
    folds = np.array(oos.fold)
    tested = sum(int(ts[folds == k].max() - ts[folds == k].min()) + step_ms for k in set(oos.fold))
    return {
        "test_days": tested / 86_400_000,
        "file_days": (last - first) / 86_400_000,
        "share": tested / (last - first),
    }
