"""``stackbot evaluate``: a walk-forward out-of-sample report for every member, the ensemble
and four baselines (always flat, buy & hold, momentum sign, logistic regression on the same
features).

For each of the most recent ``folds`` walk-forward folds, the members are trained on that
fold's train part, calibrated on its validation part, and scored on its test part. Nothing is
tuned on a test part. Every predictor's out-of-sample P(up) then trades through the engine
(replay feed, paper broker, full risk manager) for the net-of-cost return, Sharpe and
drawdown. The output is ``report.md`` plus PNG plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bot.domain import Candle, Gap, OrderIntent, Side, Signal
from bot.feeds.files import CandleSeries
from bot.ports import PortfolioView
from models.calibrate import reliability, report, sigmoid
from models.dataset import SymbolData, reference_timeline, split_by_time, splits, symbol_data
from bot.domain import timeframe_ms
from models.features import FEATURE_NAMES, raw_features
from models.meta import fit_stacker
from models.train import TrainConfig, train_member

ATR = FEATURE_NAMES.index("atr_pct")
BASELINES = ("always_flat", "buy_and_hold", "momentum_sign", "logistic_regression")


@dataclass
class OOS:
    """Out-of-sample predictions, concatenated over folds."""

    symbol: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    up: list[float] = field(default_factory=list)
    labeled: list[bool] = field(default_factory=list)
    fold: list[int] = field(default_factory=list)
    p: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, values: np.ndarray) -> None:
        self.p.setdefault(name, []).extend(float(v) for v in values)


class PrecomputedSource:
    """Replays one predictor's out-of-sample P(up) through the engine."""

    def __init__(self, name: str, table: dict[tuple[str, int], tuple[float, float]]) -> None:
        self.name = name
        self.model_version = f"eval:{name}"
        self.table = table

    def on_gap(self, gap: Gap) -> None:
        return None

    async def on_candles(self, candles: Sequence[Candle]) -> list[Signal]:
        out = []
        for c in candles:
            hit = self.table.get((c.symbol, c.ts))
            if hit is not None:
                out.append(Signal(c.symbol, c.ts, hit[0], 0.0, self.name, self.model_version,
                                  price=c.close, atr=hit[1]))
        return out


class ThresholdStrategy:
    """The same rule for every predictor: long above 0.5, flat below."""

    def decide(self, signal: Signal, portfolio: PortfolioView) -> OrderIntent | None:
        if any(not o.is_protective for o in portfolio.working_orders(signal.symbol)):
            return None
        held = portfolio.position(signal.symbol).quantity
        if signal.p_up > 0.5 and held == 0:
            return OrderIntent(signal.symbol, Side.BUY, "p_up > 0.5", signal.ts,
                               signal.model_version, confidence=signal.p_up)
        if signal.p_up < 0.5 and held > 0:
            return OrderIntent(signal.symbol, Side.SELL, "p_up < 0.5", signal.ts,
                               signal.model_version, reduce_only=True, quantity=held)
        return None


def out_of_sample(data: Sequence[SymbolData], cfg: TrainConfig, members: Sequence[str],
                  folds: int, on_fold: Any = None) -> OOS:
    ref = reference_timeline(data)
    embargo = cfg.lookback + cfg.horizon
    fold_list = splits(ref, cfg.train_rows, cfg.val_rows, cfg.test_rows, embargo, folds)
    if not fold_list:
        raise ValueError("not enough history for one walk-forward fold")
    oos = OOS()
    for k, split in enumerate(fold_list):
        parts = split_by_time(data, split, ref, cfg.lookback, cfg.horizon, cfg.cost)
        results = [train_member(n, data, parts, cfg) for n in members]
        test, lab_v = parts.test, parts.val.labeled
        val_l = np.stack([r.val_logits / r.temperature for r in results], axis=1)
        w, b = fit_stacker(val_l[lab_v], parts.val.up[lab_v])
        test_l = np.stack([r.test_logits / r.temperature for r in results], axis=1)
        offset = 0
        for d, n in zip(data, parts.sizes["test"]):
            rows = test.t[offset:offset + n]
            oos.symbol += [d.symbol] * n
            oos.ts += d.ts[rows].tolist()
            mom = np.log(d.close[rows] / d.close[np.maximum(rows - cfg.horizon, 0)])
            oos.add("momentum_sign", np.where(mom > 0, 0.55, 0.45))
            offset += n
        oos.up += test.up.astype(float).tolist()
        oos.labeled += test.labeled.astype(bool).tolist()
        oos.fold += [k] * len(test)
        for r, col in zip(results, test_l.T):
            oos.add(r.name, sigmoid(col))
        oos.add("ensemble", sigmoid(test_l @ w + b))
        oos.add("always_flat", np.full(len(test), 0.5))
        oos.add("buy_and_hold", np.full(len(test), 0.99))
        tr = parts.train  # the logistic baseline: the same features, the same train part
        lab = tr.labeled
        lw, lb = fit_stacker(np.nan_to_num(tr.x[lab, -1, :]), tr.up[lab], l2=10.0)
        oos.add("logistic_regression", sigmoid(np.nan_to_num(test.x[:, -1, :]) @ lw + lb))
        if on_fold:
            on_fold(k, len(fold_list))
    return oos


def metrics_table(oos: OOS) -> dict[str, dict[str, float]]:
    lab = np.array(oos.labeled)
    y = np.array(oos.up)[lab]
    return {name: report(np.array(p)[lab], y) for name, p in oos.p.items()}


def signal_tables(oos: OOS, atr: dict[str, np.ndarray], data: Sequence[SymbolData]
                  ) -> dict[str, dict[tuple[str, int], tuple[float, float]]]:
    """Per predictor: (symbol, open time) -> (P(up), ATR in price units) for the engine."""
    by_symbol = {d.symbol: d for d in data}
    atr_at = [float(atr[s][np.searchsorted(by_symbol[s].ts, t)]) for s, t in zip(oos.symbol, oos.ts)]
    return {name: {(s, t): (p, a) for s, t, p, a in zip(oos.symbol, oos.ts, ps, atr_at)}
            for name, ps in oos.p.items()}


def accuracy_over_time(oos: OOS, bucket_ms: int = 30 * 86_400_000) -> dict[str, list[tuple[int, float]]]:
    lab = np.array(oos.labeled)
    ts = np.array(oos.ts)[lab]
    y = np.array(oos.up)[lab]
    buckets = ts // bucket_ms
    out: dict[str, list[tuple[int, float]]] = {}
    for name, ps in oos.p.items():
        p = np.array(ps)[lab]
        out[name] = [(int(b * bucket_ms), float(((p[buckets == b] > 0.5) == (y[buckets == b] > 0.5)).mean()))
                     for b in np.unique(buckets)]
    return out


def load(series: Sequence[CandleSeries]) -> tuple[list[SymbolData], dict[str, np.ndarray]]:
    """Features per symbol, and the ATR in price units that the risk manager sizes with."""
    data, atr = [], {}
    for s in series:
        d = symbol_data(s)
        o = np.array([[c.open, c.high, c.low, c.close, c.volume] for c in s.candles])
        atr[s.symbol] = raw_features(o, d.ts, timeframe_ms(s.timeframe))[:, ATR] * o[:, 3]
        data.append(d)
    return data, atr


def reliability_data(oos: OOS) -> dict[str, list[tuple[float, float, int]]]:
    lab = np.array(oos.labeled)
    y = np.array(oos.up)[lab]
    return {name: reliability(np.array(p)[lab], y) for name, p in oos.p.items()
            if name not in ("always_flat", "buy_and_hold")}
