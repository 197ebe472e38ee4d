"""The meta-learner: stacks the members' calibrated logits with an L2-regularised logistic
regression fitted on their out-of-fold (validation) predictions, then re-weights members
online by their recent log-loss.

The online re-weighting rescales the stacker's weights, so the stacked probability that comes
out of it is no longer the calibrated one the stacker was fitted to give. A final Platt
recalibration restores it: ``replay_online`` runs the re-weighting in time order, learning
each outcome on the candle that decided it (as live), and a one-feature logistic regression
maps the re-weighted logit to a probability. The recalibration is cross-fitted: the
validation part is cut into time blocks, and each block's re-weighted logits come from a
stacker fitted on the other blocks (purged of labels that reach into it). Fitting it on the
stacker's own in-sample logits would learn the stacker's over-fit and widen it. That p, and
only that p, reaches the Kelly sizing; its calibration is measured on the test windows."""

from __future__ import annotations

from collections import deque

import numpy as np

from models.calibrate import EPS, sigmoid


def fit_stacker(logits: np.ndarray, y: np.ndarray, l2: float = 20.0,
                iters: int = 200) -> tuple[np.ndarray, float]:
    """Weights and bias of a logistic regression on member logits [N, M] (Newton steps).
    The L2 penalty is strong on purpose: a dozen correlated members and a few thousand
    validation samples overfit easily."""
    n, m = logits.shape
    X = np.hstack((logits, np.ones((n, 1))))
    w = np.zeros(m + 1)
    reg = np.full(m + 1, l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = sigmoid(X @ w)
        grad = X.T @ (p - y) / n + reg * w / n
        hess = (X * (p * (1 - p))[:, None]).T @ X / n + np.diag(reg) / n + 1e-9 * np.eye(m + 1)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


class OnlineWeights:
    """Per-member multipliers exp(-eta * rolling log-loss excess), renormalised to mean 1."""

    def __init__(self, members: int, window: int = 200, eta: float = 5.0) -> None:
        self.eta = eta
        self.losses = [deque(maxlen=window) for _ in range(members)]

    def update(self, member_p: np.ndarray, outcome: float) -> None:
        for q, p in zip(self.losses, member_p):
            p = min(max(float(p), EPS), 1 - EPS)
            q.append(-(outcome * np.log(p) + (1 - outcome) * np.log(1 - p)))

    def multipliers(self) -> np.ndarray:
        means = np.array([np.mean(q) if q else np.log(2) for q in self.losses])
        w = np.exp(-self.eta * (means - means.min()))
        return w / w.mean()


def stacked_logit(logits: np.ndarray, weights: np.ndarray, bias: float,
                  online: np.ndarray | None = None) -> np.ndarray:
    """The stacker's logit from member logits [..., M], re-weighted by ``online``."""
    w = weights if online is None else weights * online
    return logits @ w + bias


def combine(logits: np.ndarray, weights: np.ndarray, bias: float,
            online: np.ndarray | None = None,
            recal: tuple[float, float] = (1.0, 0.0)) -> np.ndarray:
    """P(target first) from member logits [..., M]: stacked, re-weighted, recalibrated."""
    a, c = recal
    return sigmoid(a * stacked_logit(logits, weights, bias, online) + c)


def replay_online(logits: np.ndarray, ts: np.ndarray, resolved: np.ndarray, y: np.ndarray,
                  weights: np.ndarray, bias: float, window: int = 200,
                  eta: float = 5.0) -> np.ndarray:
    """The re-weighted stacked logit of every sample, as the live source would have computed
    it: samples in time order, starting from no history; before the samples of time ``t`` are
    scored, every outcome decided at or before ``t`` (``resolved``; -1 never) is learned.
    ``logits`` are the members' calibrated logits [N, M]."""
    n, m = logits.shape
    out = np.empty(n)
    online = OnlineWeights(m, window, eta)
    member_p = sigmoid(logits)
    learn = np.nonzero(resolved >= 0)[0]
    learn = learn[np.lexsort((ts[learn], resolved[learn]))]
    order = np.argsort(ts, kind="stable")
    j = 0
    i = 0
    while i < n:
        k = i
        now = ts[order[i]]
        while k < n and ts[order[k]] == now:
            k += 1
        while j < len(learn) and resolved[learn[j]] <= now:
            online.update(member_p[learn[j]], float(y[learn[j]]))
            j += 1
        group = order[i:k]
        out[group] = stacked_logit(logits[group], weights, bias, online.multipliers())
        i = k
    return out


def fit_recalibration(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling of the re-weighted logit: (a, c) with p = sigmoid(a * z + c)."""
    if len(z) == 0 or y.min() == y.max():
        return 1.0, 0.0
    w, c = fit_stacker(z[:, None], y, l2=1e-3)
    return float(w[0]), float(c)


def cross_fitted_recalibration(logits: np.ndarray, ts: np.ndarray, resolved: np.ndarray,
                               y: np.ndarray, labeled: np.ndarray, blocks: int = 4,
                               l2: float = 20.0) -> tuple[float, float]:
    """Platt parameters for the re-weighted stacked logit, fitted on logits the stacker did
    not see: per time block, a stacker fitted on the other blocks (minus any sample whose
    outcome is decided inside the block) scores the block, replayed online from no history."""
    if len(ts) == 0:
        return 1.0, 0.0
    edges = np.quantile(ts, np.linspace(0.0, 1.0, blocks + 1))
    z = np.full(len(ts), np.nan)
    for k in range(blocks):
        lo, hi = edges[k], edges[k + 1]
        inside = (ts >= lo) & ((ts < hi) if k < blocks - 1 else (ts <= hi))
        leaks = (ts < lo) & (resolved >= lo)  # decided inside the block: purged
        fit = labeled & ~inside & ~leaks
        if fit.sum() < 10 or not inside.any() or y[fit].min() == y[fit].max():
            continue
        w, b = fit_stacker(logits[fit], y[fit], l2)
        z[inside] = replay_online(logits[inside], ts[inside], resolved[inside], y[inside], w, b)
    ok = labeled & ~np.isnan(z)
    return fit_recalibration(z[ok], y[ok])
