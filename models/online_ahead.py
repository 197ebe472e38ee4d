"""The ensemble's combiner over a whole series at once: a backtest of one series.

Candle by candle, ``EnsembleSignalSource`` remembers each prediction with its barriers, learns
its outcome on the candle that touches the stop (first) or the target, drops it when its
horizon passes untouched, and scores each candle with the stacker re-weighted by the online
multipliers of that moment (``models/meta.py``). None of that depends on what the run does
with the signals, only on the candles and the member outputs, so where a backtest knows the
series it is computed here in vectorised passes instead:

- ``resolutions``: for every prediction, the candle that decides it and how (one pass per
  candle of the horizon, over all predictions);
- ``OnlineAhead.p``: block by block, as the member outputs are calibrated, the multipliers at
  each scored candle (the mean log-loss of the last ``window`` outcomes learned by then, from
  running sums) and the stacked p with them.

The numbers are the candle-by-candle source's to about 1e-12 (the running sums round
differently from a mean over the window; tests/test_online_ahead.py). ``online`` and
``pending`` give the candle-by-candle source's state after any candle, so a run that leaves
this path (a candle off the script, a new model version) goes on from the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from bot.domain import Regime
from models.calibrate import EPS, sigmoid
from models.ensemble import Calibrated
from models.labels import BarrierSpec
from models.meta import LogitMoments, OnlineWeights, Stacker

# what a row's signal says: p, expected return, dispersion, regime, each member's p
Fields = tuple[float, float, float, Regime, tuple[tuple[str, float], ...]]
FIELD_ROWS = 256  # rows whose signal fields are made at a time (``OnlineAhead.fields``)
NEVER = -1  # an outcome that is never learned: the horizon passed, or the series ended first


def resolutions(ts: np.ndarray, high: np.ndarray, low: np.ndarray, made: np.ndarray,
                upper: np.ndarray, lower: np.ndarray, horizon_ms: int) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """For predictions made at candles ``made`` (ascending indices into the series ``ts``,
    ``high``, ``low``) with barriers ``upper`` and ``lower``: the candle at which the
    candle-by-candle source lets each go (``len(ts)``: still waiting at the end) and its
    outcome (0 the stop, 1 the target, ``NEVER`` a timeout or still waiting). The source's
    rule, per later candle: the stop touched first, then the target, then kept while the
    candle opens before the horizon's end (``made``'s open time + ``horizon_ms``)."""
    n = len(ts)
    k = np.full(len(made), n)
    outcome = np.full(len(made), NEVER)
    deadline = ts[made] + horizon_ms
    waiting = made + 1 < n
    d = 1
    while waiting.any():
        j = np.minimum(made + d, n - 1)
        stop = waiting & (low[j] <= lower)
        target = waiting & ~stop & (high[j] >= upper)
        timeout = waiting & ~stop & ~target & (ts[j] >= deadline)
        gone = stop | target | timeout
        k[gone] = made[gone] + d
        outcome[stop] = 0
        outcome[target] = 1
        waiting &= ~gone & (made + d + 1 < n)
        d += 1
    return k, outcome


class OnlineAhead:
    """One series' predictions and outcomes, and the stacked p at its scored candles.

    ``row`` [N]: each candle's window (-1: not scored); ``atr`` [N] in price units; the
    candle-by-candle source remembers a prediction at each scored candle whose ATR is
    positive, from candle ``start`` on (the first it takes with nothing learned or waiting).
    ``p(hi, member_p, logits)`` fills the p of the rows below ``hi`` (the rows calibrated so
    far: ``member_p`` and ``logits`` [rows, M] are valid below it)."""

    def __init__(self, ts: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
                 atr: np.ndarray, row: np.ndarray, barrier: BarrierSpec, step_ms: int,
                 stacker: Stacker, members: int, start: int = 0, window: int = 200,
                 eta: float = 5.0) -> None:
        self.ts, self.row = ts, row
        self.stacker, self.window, self.eta = stacker, window, eta
        made = (row >= 0) & (atr > 0)
        made[:start] = False
        self.made = np.flatnonzero(made)  # candles that remember one
        self.upper, self.lower = barrier.levels(close[self.made], atr[self.made])
        self.k, outcome = resolutions(ts, high, low, self.made, self.upper, self.lower,
                                      barrier.horizon * step_ms)
        # the outcomes learned, in the order the source learns them: by the candle that
        # decides them, then by the candle that made them (its waiting list's order)
        learned = np.flatnonzero(outcome != NEVER)
        learned = learned[np.lexsort((self.made[learned], self.k[learned]))]
        self.ev_k = self.k[learned]
        self.ev_row = row[self.made[learned]]
        self.ev_y = outcome[learned].astype(np.float64)
        self.losses = np.empty((len(learned), members))
        self.sums = np.zeros((len(learned) + 1, members))  # running sums of ``losses``
        self.ev_done = 0  # events whose losses are in
        self.candle_of = np.flatnonzero(row >= 0)  # each row's candle
        self.p_of = np.empty(len(self.candle_of))
        self.p_done = int(np.searchsorted(self.candle_of, start))  # rows whose p is in
        self._fields: list[Fields] = []  # rows from ``_fields_lo`` on (``fields``)
        self._fields_lo = 0
        self.atr: list[float] = atr.tolist()  # per candle, in price units
        self.rows: list[int] = row.tolist()

    def learned_by(self, j: int) -> int:
        """Outcomes the source has learned once it has taken candle ``j``."""
        return int(np.searchsorted(self.ev_k, j, side="right"))

    def _losses_to(self, n: int, member_p: np.ndarray) -> None:
        if n <= self.ev_done:
            return
        lo = self.ev_done
        p = np.minimum(np.maximum(member_p[self.ev_row[lo:n]], EPS), 1 - EPS)
        y = self.ev_y[lo:n, None]
        loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        self.losses[lo:n] = loss
        # one sum after another from the last (np.cumsum adds in order): the same numbers
        # however the outcomes come in blocks
        self.sums[lo : n + 1] = np.cumsum(np.vstack((self.sums[lo], loss)), axis=0)
        self.ev_done = n

    def p(self, hi: int, member_p: np.ndarray, logits: np.ndarray) -> None:
        """The stacked p of the rows below ``hi`` not computed yet."""
        lo = self.p_done
        if hi <= lo:
            return
        n = np.searchsorted(self.ev_k, self.candle_of[lo:hi], side="right")
        self._losses_to(int(n[-1]), member_p)
        start = np.maximum(n - self.window, 0)
        count = (n - start)[:, None]
        means = np.where(count > 0, (self.sums[n] - self.sums[start]) / np.maximum(count, 1),
                         np.log(2))
        w = np.exp(-self.eta * (means - means.min(axis=1, keepdims=True)))
        online = w / w.mean(axis=1, keepdims=True)
        self.p_of[lo:hi] = stacked_p(logits[lo:hi], online, self.stacker)
        self.p_done = hi

    def fields(self, r: int, cal: Calibrated, regime: np.ndarray,
               regime_of: Callable[[int], Regime], names: Sequence[str]) -> Fields:
        """What row ``r``'s signal says (its p computed), made as Python objects for up to
        ``FIELD_ROWS`` rows at a time, so that per candle it is a lookup (the rows before
        are let go)."""
        k = r - self._fields_lo
        if not 0 <= k < len(self._fields):
            hi = min(r + FIELD_ROWS, self.p_done)
            self._fields = list(zip(
                self.p_of[r:hi].tolist(), cal.exp_ret[r:hi].tolist(), cal.disp[r:hi].tolist(),
                [regime_of(i) for i in regime[r:hi].tolist()],
                [tuple(zip(names, row, strict=True)) for row in cal.shown[r:hi].tolist()],
                strict=True))
            self._fields_lo, k = r, 0
        return self._fields[k]

    def online(self, j: int, member_p: np.ndarray) -> OnlineWeights:
        """The source's online weights once it has taken candle ``j``."""
        n = self.learned_by(j)
        self._losses_to(n, member_p)
        return OnlineWeights.of(self.losses[max(0, n - self.window) : n], self.window,
                                self.eta, self.losses.shape[1])

    def pending(self, j: int, member_p: np.ndarray) -> list[tuple[int, float, float,
                                                                  np.ndarray]]:
        """The predictions still waiting for an outcome once the source has taken candle
        ``j``, as its waiting list holds them: (open time, upper, lower, member p)."""
        out = []
        for i in np.flatnonzero((self.made <= j) & (self.k > j)):
            c = int(self.made[i])
            out.append((int(self.ts[c]), float(self.upper[i]), float(self.lower[i]),
                        member_p[self.row[c]]))
        return out


def stacked_p(logits: np.ndarray, online: np.ndarray, stacker: Stacker) -> np.ndarray:
    """``Stacker.p`` of each row of ``logits`` [N, M] with its own multipliers [N, M]."""
    w, bias, moments = stacker.weights, stacker.bias, stacker.moments
    w2 = w * online
    if moments is None:
        return sigmoid(np.einsum("nm,nm->n", logits, w2) + bias)
    return sigmoid(moment_kept_rows(logits, w, w2, moments) + bias)


def moment_kept_rows(logits: np.ndarray, w: np.ndarray, w2: np.ndarray,
                     moments: LogitMoments) -> np.ndarray:
    """``meta.moment_kept``'s logit (less the bias) for rows with their own re-weighted
    weights ``w2`` [N, M]."""
    before = float(w @ moments.cov @ w)
    after = np.einsum("nm,mk,nk->n", w2, moments.cov, w2)
    ok = (after > 0) & (before > 0)
    scale = np.where(ok, np.sqrt(np.where(ok, before, 1.0) / np.where(ok, after, 1.0)), 1.0)
    offset = float(moments.mean @ w)
    return np.einsum("nm,nm->n", logits - moments.mean, scale[:, None] * w2) + offset
