"""The meta-learner: stacks the members' calibrated logits with an L2-regularised logistic
regression fitted on their out-of-fold (validation) predictions, then re-weights members
online by their recent log-loss."""

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


def combine(logits: np.ndarray, weights: np.ndarray, bias: float,
            online: np.ndarray | None = None) -> np.ndarray:
    """P(up) from member logits [..., M]."""
    w = weights if online is None else weights * online
    return sigmoid(logits @ w + bias)
