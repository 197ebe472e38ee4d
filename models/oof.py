"""Out-of-fold predictions and the combiner they choose (issue 11 items 1 to 3).

The scheme, for one training region R (every row before the test part and its embargo):

1. **Purged walk-forward folds inside R** (``inner_splits``). ``oof_folds`` consecutive
   out-of-fold parts tile the second half of R; each fold trains on every row before its own
   inner validation part, and ``lookback + horizon`` rows of embargo separate train,
   validation and out-of-fold part, so no window or label of one reaches into the next.
2. **Every member predicts each out-of-fold part from a model that never saw it.** Early
   stopping and the member's temperature use that fold's inner validation part, never the
   out-of-fold part.
3. **Combiner candidates** on the members' calibrated out-of-fold logits: the plain average of
   the calibrated logits, an L2 logistic stacker (scored cross-fitted: each fold's part by a
   stacker fitted on the other folds' parts), and the best single member. Each is scored as it
   would run live, with the online re-weighting (``models/meta.replay_online``). The candidate
   with the lowest out-of-fold log-loss is deployed; since the best single member is one of
   them and the re-weighting cannot move a one-member combination, the deployed combiner is
   never worse than the best member out of fold.
4. **Final members on all of R**, with R's last ``val_rows`` as their early-stopping and
   temperature part (the outer split's train and validation parts), combined by the chosen
   combiner, the stacker refitted on every out-of-fold prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.calibrate import log_loss, sigmoid
from models.dataset import Parts, SymbolData, split_by_time, window_times
from models.meta import LogitMoments, fit_stacker, replay_online
from models.windows import Split, expanding_folds

AVERAGE = "average"
STACKING = "stacking"
BEST_MEMBER = "best_member"
COMBINERS = (AVERAGE, STACKING, BEST_MEMBER)


def inner_splits(outer: Split, folds: int, val_rows: int, embargo: int) -> list[Split]:
    """Purged walk-forward folds inside the rows before ``outer``'s test part: their
    out-of-fold parts tile the second half of what is left after a validation part and two
    embargoes. Empty when the region is too short for ``folds`` folds."""
    n_region = outer.test[0] - embargo
    usable = n_region - val_rows - 2 * embargo
    first = usable // 2
    if folds < 1 or first < 1:
        return []
    return expanding_folds(n_region, first, val_rows, embargo, folds)


@dataclass(frozen=True)
class OutOfFold:
    """The members' calibrated out-of-fold logits, and what scoring them needs."""

    members: tuple[str, ...]
    logits: np.ndarray  # [N, M] calibrated (each member's fold temperature applied)
    up: np.ndarray  # [N] 1.0 target first
    labeled: np.ndarray  # [N] bool: decided (not a timeout)
    ts: np.ndarray  # [N] open time of the window's last candle
    resolved: np.ndarray  # [N] open time of the candle that decided it (-1 never)
    fold: np.ndarray  # [N] inner fold
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # baselines' out-of-fold p

    def member_p(self, name: str) -> np.ndarray:
        return sigmoid(self.logits[:, self.members.index(name)])


@dataclass(frozen=True)
class Combiner:
    """How the members' calibrated logits become one logit: ``logits @ weights + bias``,
    re-weighted online as live (``models/meta.py``)."""

    name: str  # "average", "stacking" or "best_member:<member>"
    weights: np.ndarray
    bias: float


@dataclass(frozen=True)
class Choice:
    deployed: Combiner
    candidates: dict[str, Combiner]  # every candidate, fitted on all out-of-fold data
    oof_p: dict[str, np.ndarray]  # each candidate's out-of-fold p, as scored
    oof_log_loss: dict[str, float]
    moments: LogitMoments  # of the out-of-fold logits: what the re-weighting keeps


MemberTrainer = Callable[[str, Parts], tuple[np.ndarray, float]]
"""Trains one member on a fold's parts; returns its raw test-part logits and temperature."""


def out_of_fold(data: Sequence[SymbolData], outer: Split, ref: np.ndarray, lookback: int,
                horizon: int, max_train: int | None, members: Sequence[str], folds: int,
                val_rows: int, train: MemberTrainer,
                baselines: Callable[[Parts], dict[str, np.ndarray]] | None = None,
                ) -> OutOfFold:
    """Every member's calibrated prediction of every inner fold's out-of-fold part, from a
    model trained before it (``train``); ``baselines`` adds other predictors' out-of-fold p,
    fitted on the same fold's train part."""
    splits = inner_splits(outer, folds, val_rows, lookback + horizon)
    if not splits:
        raise ValueError(f"not enough history before the test part for {folds} out-of-fold "
                         f"fold(s) of {val_rows} validation rows")
    cols: list[list[np.ndarray]] = [[] for _ in members]
    up, lab, ts, res, fold = [], [], [], [], []
    extra: dict[str, list[np.ndarray]] = {}
    for k, split in enumerate(splits):
        parts = split_by_time(data, split, ref, lookback, horizon, max_train)
        for j, name in enumerate(members):
            raw, temperature = train(name, parts)
            cols[j].append(raw / temperature)
        t, r = window_times(data, parts, "test")
        up.append(parts.test.up)
        lab.append(parts.test.labeled.astype(bool))
        ts.append(t)
        res.append(r)
        fold.append(np.full(len(t), k))
        if baselines is not None:
            for name, p in baselines(parts).items():
                extra.setdefault(name, []).append(p)
    logits = (np.stack([np.concatenate(c) for c in cols], axis=1) if members
              else np.zeros((sum(len(t) for t in ts), 0)))
    return OutOfFold(tuple(members), logits, np.concatenate(up), np.concatenate(lab),
                     np.concatenate(ts), np.concatenate(res), np.concatenate(fold),
                     {k: np.concatenate(v) for k, v in extra.items()})


def _replay(oof: OutOfFold, weights_of: Callable[[int], tuple[np.ndarray, float]],
            moments: LogitMoments) -> np.ndarray:
    """The out-of-fold p of a combiner, fold by fold, each replayed as live from no history."""
    out = np.empty(len(oof.up))
    for k in np.unique(oof.fold):
        sel = oof.fold == k
        w, b = weights_of(int(k))
        out[sel] = sigmoid(replay_online(oof.logits[sel], oof.ts[sel], oof.resolved[sel],
                                         oof.up[sel], w, b, moments))
    return out


def choose_combiner(oof: OutOfFold) -> Choice:
    """Score every candidate out of fold and deploy the one with the lowest log-loss."""
    m = len(oof.members)
    if m == 0:
        raise ValueError("no members to combine")
    lab = oof.labeled
    y = oof.up
    moments = LogitMoments.of(oof.logits)
    member_ll = {n: log_loss(oof.member_p(n)[lab], y[lab]) for n in oof.members}
    best = min(member_ll, key=member_ll.__getitem__)
    one_hot = np.eye(m)[oof.members.index(best)]
    w_all, b_all = fit_stacker(oof.logits[lab], y[lab])
    candidates = {AVERAGE: Combiner(AVERAGE, np.full(m, 1.0 / m), 0.0),
                  STACKING: Combiner(STACKING, w_all, b_all),
                  f"{BEST_MEMBER}:{best}": Combiner(f"{BEST_MEMBER}:{best}", one_hot, 0.0)}
    folds = np.unique(oof.fold)
    cross: dict[int, tuple[np.ndarray, float]] = {}
    for k in folds:
        other = lab & (oof.fold != k)
        cross[int(k)] = (fit_stacker(oof.logits[other], y[other]) if len(folds) > 1 and
                         other.any() else (w_all, b_all))
    oof_p = {
        AVERAGE: _replay(oof, lambda k: (candidates[AVERAGE].weights, 0.0), moments),
        STACKING: _replay(oof, lambda k: cross[k], moments),
        # one member alone: the re-weighting cannot move it (meta.stacked_logit rescales a
        # one-hot weight back to itself), so this is the member's calibrated p
        f"{BEST_MEMBER}:{best}": oof.member_p(best),
    }
    scores = {n: log_loss(p[lab], y[lab]) for n, p in oof_p.items()}
    chosen = min(scores, key=lambda n: (scores[n], COMBINERS.index(n.split(":")[0])))
    return Choice(candidates[chosen], candidates, oof_p, scores, moments)
