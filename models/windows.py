"""Sliding windows and chronological splits.

A sample at row t is the window of features t-L+1..t. Its direction label is the
triple-barrier outcome (``models/labels.py``): 1 when the target is touched before the stop
within H candles, 0 when the stop is; timeouts carry no direction and are masked out of the
classification loss. Its return label is the forward log return over the same H candles
(close t -> close t+H), for the members' return heads. Without barriers (the PPO member's
one-step returns), the direction is the sign of that return and moves smaller than the cost
threshold carry none. Splits are
chronological and expanding (each fold trains on all history before its validation part),
with an embargo between train, validation and test, so no window or label of one part
overlaps another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.labels import Barriers


@dataclass(frozen=True)
class Windows:
    x: np.ndarray  # [N, L, F] float32
    ret: np.ndarray  # [N] forward log return
    up: np.ndarray  # [N] 1.0 target first (or up), 0.0 stop first (or down)
    labeled: np.ndarray  # [N] bool: the sample has a direction (not a timeout)
    t: np.ndarray  # [N] row index of the window's last candle

    def __len__(self) -> int:
        return len(self.t)

    def take(self, idx: np.ndarray) -> Windows:
        return Windows(self.x[idx], self.ret[idx], self.up[idx], self.labeled[idx], self.t[idx])


def make_windows(features: np.ndarray, close: np.ndarray, lookback: int, horizon: int,
                 cost: float = 0.0, rows: np.ndarray | None = None,
                 barriers: Barriers | None = None) -> Windows:
    """Windows ending at each row in ``rows`` (default: all) that are fully defined and have a
    label; windows touching a NaN feature are dropped. With ``barriers`` the direction is the
    triple-barrier outcome and rows whose outcome was not observed are dropped."""
    t_all = np.arange(len(close)) if rows is None else rows
    t_all = t_all[(t_all >= lookback - 1) & (t_all + horizon < len(close))]
    if barriers is not None:
        t_all = t_all[barriers.valid[t_all]]
    bad = np.isnan(features).any(axis=1)
    csum = np.concatenate(([0], np.cumsum(bad)))
    ok = (csum[t_all + 1] - csum[t_all + 1 - lookback]) == 0
    t = t_all[ok]
    idx = t[:, None] + np.arange(-lookback + 1, 1)[None, :]
    x = features[idx].astype(np.float32)
    ret = np.log(close[t + horizon] / close[t]).astype(np.float32)
    if barriers is None:
        return Windows(x, ret, (ret > 0).astype(np.float32), np.abs(ret) > cost, t)
    return Windows(x, ret, barriers.up[t], barriers.decided[t], t)


@dataclass(frozen=True)
class Split:
    train: tuple[int, int]  # row ranges [start, end) of the windows' last candle
    val: tuple[int, int]
    test: tuple[int, int]


def expanding_folds(n_rows: int, first_train: int, val: int, embargo: int,
                    folds: int) -> list[Split]:
    """Expanding-window walk-forward. The test parts tile every row after the first training
    span and its validation part, ``[first_train + val + 2 * embargo, n_rows)``, in ``folds``
    consecutive pieces of (nearly) equal length. Each fold validates on the ``val`` rows just
    before its test part and trains on every row before that. ``embargo`` rows (the lookback
    plus the label horizon) separate train, validation and test, which purges every window
    whose features or label would reach into the next part. Empty if the rows do not make
    ``folds`` non-empty test parts."""
    start = first_train + val + 2 * embargo
    span = n_rows - start
    if folds < 1 or first_train < 1 or span < folds:
        return []
    edges = [start + span * k // folds for k in range(folds + 1)]
    out = []
    for a, b in zip(edges, edges[1:], strict=False):
        va = (a - embargo - val, a - embargo)
        out.append(Split((0, va[0] - embargo), va, (a, b)))
    return out


def holdout(n_rows: int, min_train: int, val: int, test: int, embargo: int) -> Split | None:
    """The split ``stackbot train`` uses: the last ``test`` rows held out, the ``val`` rows
    before them for calibration and stacking, every row before those for training (the last
    fold of ``expanding_folds`` with one fold). None with fewer than ``min_train`` train
    rows."""
    first_train = n_rows - test - val - 2 * embargo
    if first_train < min_train:
        return None
    return expanding_folds(n_rows, first_train, val, embargo, 1)[0]
