"""The meta-learner: stacks the members' calibrated logits with an L2-regularised logistic
regression fitted on their out-of-fold (validation) predictions, then re-weights members
online by their recent log-loss.

The re-weighting must not cost the stacker its calibration, since its p goes to Kelly.
Multiplying the stacker's weights by per-member factors changes the spread and the centre of
the stacked logit, and with them the calibration the stacker was fitted for (measured on
BTC/ETH 1h test windows: ECE 0.015 for the stacker alone, 0.023 once re-weighted). So the
re-weighting is constrained to keep the first two moments of the stacked logit on the
validation windows: with the members' validation logit mean ``mu`` and covariance ``S``, the
re-weighted weights ``w' = w * m`` are scaled by ``sqrt(w'S w / w'S w')`` and centred on
``mu``, so the logit has the mean and variance the calibrated stacker had. It changes which
members drive the forecast, not how confident the forecast is. ``replay_online`` runs the
re-weighting in time order, learning each outcome on the candle that decided it (as live),
so its effect is measured on the test windows."""

from __future__ import annotations

from dataclasses import dataclass

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
    """Per-member multipliers exp(-eta * rolling log-loss excess), renormalised to mean 1.

    The last ``window`` losses sit in time order in one array (twice the window long, moved
    back when full), so the means are one vectorised call, and they depend only on those
    losses: a source rebuilt after a restart gets the same multipliers bit for bit."""

    def __init__(self, members: int, window: int = 200, eta: float = 5.0) -> None:
        self.eta, self.window = eta, window
        self._losses = np.empty((2 * window, members))
        self._start = self._end = 0
        self._multipliers: np.ndarray | None = None  # until the next update

    @classmethod
    def of(cls, losses: np.ndarray, window: int, eta: float, members: int) -> OnlineWeights:
        """Weights whose window holds ``losses`` [n <= window, members], oldest first: the
        state the updates with them leave (``models/online_ahead.py`` hands a run over)."""
        online = cls(members, window, eta)
        online._losses[: len(losses)] = losses
        online._end = len(losses)
        return online

    @property
    def count(self) -> int:
        """Outcomes in the window (at most ``window``)."""
        return self._end - self._start

    def update(self, member_p: np.ndarray, outcome: float) -> None:
        # np.clip's numbers, without its wrapper's cost (one update per decided outcome)
        p = np.minimum(np.maximum(np.asarray(member_p, dtype=np.float64), EPS), 1 - EPS)
        loss = -(outcome * np.log(p) + (1 - outcome) * np.log(1 - p))
        if self._end == len(self._losses):
            n = self.count
            self._losses[:n] = self._losses[self._start:self._end]
            self._start, self._end = 0, n
        self._losses[self._end] = loss
        self._end += 1
        self._multipliers = None
        if self.count > self.window:
            self._start += 1

    def multipliers(self) -> np.ndarray:
        if self._multipliers is None:
            m = self._losses.shape[1]
            means = (self._losses[self._start:self._end].mean(axis=0) if self.count
                     else np.full(m, np.log(2)))
            w = np.exp(-self.eta * (means - means.min()))
            self._multipliers = w / w.mean()
        return self._multipliers


@dataclass(frozen=True)
class LogitMoments:
    """The members' validation logits: mean [M] and covariance [M, M]."""

    mean: np.ndarray
    cov: np.ndarray

    @classmethod
    def of(cls, logits: np.ndarray) -> LogitMoments:
        if len(logits) < 2:
            m = logits.shape[1]
            return cls(np.zeros(m), np.eye(m))
        return cls(logits.mean(axis=0), np.atleast_2d(np.cov(logits.T)))

    def to_dict(self) -> dict[str, list]:
        return {"mean": self.mean.tolist(), "cov": self.cov.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> LogitMoments:
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["cov"], dtype=np.float64))


def stacked_logit(logits: np.ndarray, weights: np.ndarray, bias: float,
                  online: np.ndarray | None = None,
                  moments: LogitMoments | None = None) -> np.ndarray:
    """The stacker's logit from member logits [..., M], re-weighted by ``online``. With
    ``moments`` the re-weighting keeps the logit's validation mean and variance (see the
    module docstring); without, it is the plain product (kept to measure the difference)."""
    if online is None:
        return logits @ weights + bias
    if moments is None:
        return logits @ (weights * online) + bias
    vector, offset = moment_kept(weights, online, moments)
    return (logits - moments.mean) @ vector + offset + bias


def moment_kept(weights: np.ndarray, online: np.ndarray,
                moments: LogitMoments) -> tuple[np.ndarray, float]:
    """The re-weighted weights scaled to keep the logit's validation variance, and the
    offset that keeps its mean: the logit is ``(logits - mean) @ vector + offset + bias``."""
    w2 = weights * online
    before = float(weights @ moments.cov @ weights)
    after = float(w2 @ moments.cov @ w2)
    scale = (before / after) ** 0.5 if after > 0 and before > 0 else 1.0
    return scale * w2, float(moments.mean @ weights)


class Stacker:
    """``combine`` for one ensemble, a decision at a time: the moment-keeping re-weighting
    (``moment_kept``) is computed once per set of multipliers, not per decision (the same
    arithmetic, so the same p to the last bit). ``OnlineWeights.multipliers`` hands out a new
    array each time they change, so the array itself tells whether they did."""

    def __init__(self, weights: np.ndarray, bias: float,
                 moments: LogitMoments | None) -> None:
        self.weights, self.bias, self.moments = weights, bias, moments
        self._online: np.ndarray | None = None  # the multipliers the cache is for
        self._kept: tuple[np.ndarray, float] = (weights, 0.0)

    def p(self, logits: np.ndarray, online: np.ndarray | None) -> np.ndarray:
        if online is None or self.moments is None:
            return combine(logits, self.weights, self.bias, online, self.moments)
        if online is not self._online:
            self._kept = moment_kept(self.weights, online, self.moments)
            self._online = online
        vector, offset = self._kept
        return sigmoid((logits - self.moments.mean) @ vector + offset + self.bias)


def combine(logits: np.ndarray, weights: np.ndarray, bias: float,
            online: np.ndarray | None = None,
            moments: LogitMoments | None = None) -> np.ndarray:
    """P(target first) from member logits [..., M]: stacked and re-weighted."""
    return sigmoid(stacked_logit(logits, weights, bias, online, moments))


def replay_online(logits: np.ndarray, ts: np.ndarray, resolved: np.ndarray, y: np.ndarray,
                  weights: np.ndarray, bias: float, moments: LogitMoments | None,
                  window: int = 200, eta: float = 5.0) -> np.ndarray:
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
        out[group] = stacked_logit(logits[group], weights, bias, online.multipliers(), moments)
        i = k
    return out
