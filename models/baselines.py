"""The simple predictors every member must beat, fitted on a part's train windows and asked for
its test windows' P(target first): climatology (the train part's base rate), the momentum
sign, an L2 logistic regression, and LightGBM gradient boosting. The last two read the same
features as the members, the window's last candle, and the same triple-barrier labels;
LightGBM stops early on the part's validation windows, never on its test windows."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from models.calibrate import sigmoid
from models.dataset import Parts, SymbolData
from models.meta import fit_stacker

BASELINES = ("base_rate", "momentum_sign", "logistic_regression", "lightgbm")


def last_step(x: np.ndarray) -> np.ndarray:
    """The features of each window's last candle [N, F]."""
    return np.nan_to_num(x[:, -1, :])


def lightgbm_p(parts: Parts, seed: int = 7) -> np.ndarray:
    """P(target first) on the test windows from gradient-boosted trees on the train windows,
    early-stopped on the validation windows (deterministic, a fixed seed)."""
    import lightgbm as lgb

    tr, va = parts.train, parts.val
    lab, lab_v = tr.labeled.astype(bool), va.labeled.astype(bool)
    if len(parts.test) == 0:
        return np.zeros(0)
    if lab.sum() < 50 or len(np.unique(tr.up[lab])) < 2:
        base = float(tr.up[lab].mean()) if lab.any() else 0.5
        return np.full(len(parts.test), base)
    params = {"objective": "binary", "learning_rate": 0.03, "num_leaves": 15,
              "min_data_in_leaf": 100, "bagging_fraction": 0.8, "bagging_freq": 1,
              "feature_fraction": 0.8, "lambda_l2": 1.0, "seed": seed, "deterministic": True,
              "force_row_wise": True, "num_threads": min(4, os.cpu_count() or 1),
              "verbosity": -1}
    train_set = lgb.Dataset(last_step(tr.x[lab]), tr.up[lab])
    valid = lab_v.sum() >= 50
    booster = lgb.train(
        params, train_set, num_boost_round=400,
        valid_sets=[lgb.Dataset(last_step(va.x[lab_v]), va.up[lab_v], reference=train_set)]
        if valid else None,
        callbacks=[lgb.early_stopping(30, verbose=False)] if valid else None)
    return np.asarray(booster.predict(last_step(parts.test.x),
                                      num_iteration=booster.best_iteration or None),
                      dtype=np.float64)


def baseline_predictions(data: Sequence[SymbolData], parts: Parts,
                         horizon: int) -> dict[str, np.ndarray]:
    """Every baseline's p on ``parts.test`` (in the parts' order), fitted on ``parts.train``."""
    tr, test = parts.train, parts.test
    base = float(tr.up[tr.labeled].mean()) if tr.labeled.any() else 0.5
    mom = []
    offset = 0
    for d, n in zip(data, parts.sizes["test"], strict=False):
        rows = test.t[offset:offset + n]
        m = np.log(d.close[rows] / d.close[np.maximum(rows - horizon, 0)])
        mom.append(np.clip(np.where(m > 0, base + 0.05, base - 0.05), 0, 1))
        offset += n
    lab = tr.labeled.astype(bool)
    lw, lb = fit_stacker(last_step(tr.x[lab]), tr.up[lab], l2=10.0)
    return {"base_rate": np.full(len(test), base),
            "momentum_sign": np.concatenate(mom) if mom else np.zeros(0),
            "logistic_regression": sigmoid(last_step(test.x) @ lw + lb),
            "lightgbm": lightgbm_p(parts)}
