"""Issue 11 items 1 to 3: purged walk-forward out-of-fold predictions, and the combiner they
choose (models/oof.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.calibrate import log_loss, sigmoid
from models.dataset import Parts, symbol_data
from models.labels import BarrierSpec
from models.oof import OutOfFold, choose_combiner, inner_splits, out_of_fold
from models.windows import expanding_folds
from tests.helpers import ar1_series

LOOKBACK, HORIZON = 16, 4
EMBARGO = LOOKBACK + HORIZON


def test_inner_folds_are_purged_and_stay_before_the_test_part() -> None:
    outer = expanding_folds(6000, 3000, 400, EMBARGO, 2)[1]
    inner = inner_splits(outer, 3, 400, EMBARGO)
    assert len(inner) == 3
    for s in inner:
        assert s.train[1] + EMBARGO <= s.val[0]
        assert s.val[1] + EMBARGO <= s.test[0]
        assert s.test[1] + EMBARGO <= outer.test[0]  # never the outer test part, nor its embargo
    # the out-of-fold parts tile their span, in time order, each after its own training
    assert [s.test[1] for s in inner[:-1]] == [s.test[0] for s in inner[1:]]
    assert inner[-1].test[1] == outer.test[0] - EMBARGO
    # too little history before the test part for a validation part and two embargoes
    assert inner_splits(expanding_folds(600, 1, 200, EMBARGO, 1)[0], 3, 200, EMBARGO) == []


def test_every_out_of_fold_part_is_predicted_by_a_model_that_never_saw_it() -> None:
    """The trainer each fold gets: its training and validation windows, features and labels
    included, end before that fold's out-of-fold windows begin."""
    spec = BarrierSpec(1.0, 1.0, HORIZON)
    data = [symbol_data(ar1_series(3000, phi=0.3, seed=s, symbol=f"S{s}/USDT"), spec)
            for s in (1, 2)]
    outer = expanding_folds(3000, 1500, 300, EMBARGO, 1)[0]
    seen: list[tuple[str, Parts]] = []

    def train(name: str, parts: Parts) -> tuple[np.ndarray, float]:
        seen.append((name, parts))
        # the member's "logit": the last feature of each test window, temperature 2
        return parts.test.x[:, -1, 0].astype(np.float64), 2.0

    oof = out_of_fold(data, outer, data[0].ts, LOOKBACK, HORIZON, None, ["a", "b"], 3, 300,
                      train)
    assert [n for n, _ in seen] == ["a", "b"] * 3
    assert len(oof.up) == sum(len(p.test) for n, p in seen if n == "a") > 500
    for _, parts in seen:
        last_fit_row = max(parts.train.t.max(), parts.val.t.max())
        first_oof_row = parts.test.t.min()
        # the last fitted window's label ends (t + horizon) before the first out-of-fold
        # window's features begin (t - lookback + 1)
        assert last_fit_row + HORIZON < first_oof_row - LOOKBACK + 1
    assert np.all(np.diff(np.unique(oof.fold)) == 1)
    outer_first = np.searchsorted(data[0].ts, oof.ts.max())
    assert outer_first + HORIZON < outer.test[0] - LOOKBACK + 1
    # the temperature each fold's trainer reported is applied
    first = seen[0][1]
    assert np.allclose(oof.logits[:len(first.test), 0], first.test.x[:, -1, 0] / 2.0)


def _oof(logits: np.ndarray, y: np.ndarray, folds: int = 3) -> OutOfFold:
    n = len(y)
    ts = np.arange(n, dtype=np.int64) * 3_600_000
    return OutOfFold(tuple(f"m{j}" for j in range(logits.shape[1])), logits, y.astype(float),
                     np.ones(n, bool), ts, ts + 3_600_000, np.arange(n) * folds // n)


def _planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return z, y


def test_one_good_member_among_noise_is_deployed_alone() -> None:
    z, y = _planted(3000, 1)
    rng = np.random.default_rng(2)
    logits = np.column_stack([rng.normal(scale=2.0, size=len(y)) for _ in range(4)] + [z])
    c = choose_combiner(_oof(logits, y))
    assert c.deployed.name == "best_member:m4"
    assert c.oof_log_loss["average"] > c.oof_log_loss["best_member:m4"]


def test_independent_views_of_one_signal_are_averaged_or_stacked() -> None:
    """Five members each see the signal through their own noise: combining them beats any one,
    so the best single member is not what gets deployed."""
    z, y = _planted(4000, 3)
    rng = np.random.default_rng(4)
    logits = np.column_stack([z + rng.normal(scale=1.5, size=len(y)) for _ in range(5)]) / 2
    c = choose_combiner(_oof(logits, y))
    assert not c.deployed.name.startswith("best_member"), c.oof_log_loss
    best = min(v for k, v in c.oof_log_loss.items() if k.startswith("best_member"))
    assert c.oof_log_loss[c.deployed.name] < best - 0.01


def test_a_member_that_needs_flipping_is_stacked() -> None:
    """One informative member reads the signal upside down and another at a tenth of its
    scale: only the stacker can use them both."""
    z, y = _planted(4000, 5)
    rng = np.random.default_rng(6)
    logits = np.column_stack([-(z + rng.normal(size=len(y))), 0.1 * (z + rng.normal(size=len(y)))])
    c = choose_combiner(_oof(logits, y))
    assert c.deployed.name == "stacking", c.oof_log_loss
    assert c.deployed.weights[0] < 0 < c.deployed.weights[1]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 6), st.floats(0.0, 2.0))
def test_the_deployed_combiner_is_never_worse_than_the_best_member_out_of_fold(
        seed: int, members: int, signal: float) -> None:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=600)
    y = (rng.random(600) < 1 / (1 + np.exp(-signal * z))).astype(float)
    logits = np.column_stack([rng.normal(scale=rng.uniform(0.1, 2.0)) * z +
                              rng.normal(scale=rng.uniform(0.1, 2.0), size=600)
                              for _ in range(members)])
    c = choose_combiner(_oof(logits, y))
    members_ll = [log_loss(sigmoid(logits[:, j]), y) for j in range(members)]
    assert c.oof_log_loss[c.deployed.name] <= min(members_ll) + 1e-12
    assert set(c.oof_log_loss) == set(c.candidates) and len(c.candidates) == 3


def test_no_members_is_refused() -> None:
    with pytest.raises(ValueError, match="no members"):
        choose_combiner(_oof(np.zeros((10, 0)), np.zeros(10)))
