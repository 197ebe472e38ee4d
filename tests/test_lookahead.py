"""No look-ahead through a member (issue 11 item 8). The features are causal (tests in
test_models.py); this checks the step after them: a member predicting a whole test part the
way training and evaluation do (``models.train.member_logits``: large batches across time,
and per-timestamp graphs for the GNN) must give every window the same output whatever the
candles after it hold. A member that looks at its batch (normalising by the batch mean, or a
graph across unrelated times) would see the future through the other windows; a deliberately
leaking toy member shows that the test catches that."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from bot.domain import CandleSeries
from models.dataset import reference_timeline, split_by_time, symbol_data
from models.features import FEATURE_NAMES
from models.members import REGISTRY, Member, MemberConfig
from models.train import TrainConfig, barrier_of, member_logits
from models.windows import holdout
from tests.helpers import ar1_series

CFG = TrainConfig(lookback=16, horizon=4, k_stop=1.0, k_target=1.5, hidden=8, train_rows=600,
                  val_rows=200, test_rows=500)
F = len(FEATURE_NAMES)


class LeakyMember(Member):
    """Normalises each window by the mean of its batch: the batch holds later windows, so
    the output of a window depends on the future."""

    name = "leaky"

    def __init__(self, cfg: MemberConfig) -> None:
        super().__init__(cfg)
        self.lin = nn.Linear(cfg.n_features, 3)

    def forward(self, x: Tensor) -> Tensor:
        z = x[:, -1, :]
        return self.lin(z - z.mean(dim=0, keepdim=True))


def _perturbed(s: CandleSeries, after: int, seed: int) -> CandleSeries:
    """The same candles up to ``after``; every later one scaled by its own random factor."""
    rng = np.random.default_rng(seed)
    out = []
    for c in s.candles:
        if c.ts > after:
            f = float(rng.uniform(0.7, 1.3))
            c = replace(c, open=c.open * f, high=c.high * f, low=c.low * f, close=c.close * f,
                        volume=c.volume * float(rng.uniform(0.2, 5)))
        out.append(c)
    return CandleSeries(s.path, s.symbol, s.timeframe, out, [], False)


def _outputs(model: Member, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test-part logits on the real and on the perturbed future, and which windows end at or
    before the cut."""
    series = [ar1_series(1600, phi=0.3, seed=41, symbol="A/USDT"),
              ar1_series(1600, phi=0.3, seed=42, symbol="B/USDT")]
    bar = barrier_of(CFG)
    data = [symbol_data(s, bar) for s in series]
    ref = reference_timeline(data)
    split = holdout(len(ref), CFG.train_rows, CFG.val_rows, CFG.test_rows,
                    CFG.lookback + CFG.horizon)
    assert split is not None
    cut = int(ref[(split.test[0] + split.test[1]) // 2])  # the middle of the test part
    moved = [symbol_data(_perturbed(s, cut, 7 + i), bar) for i, s in enumerate(series)]
    parts = split_by_time(data, split, ref, CFG.lookback, CFG.horizon)
    parts2 = split_by_time(moved, split, ref, CFG.lookback, CFG.horizon)
    np.testing.assert_array_equal(parts.test.t, parts2.test.t)
    a = member_logits(model, name, data, parts, "test", CFG)
    b = member_logits(model, name, moved, parts2, "test", CFG)
    ends = np.concatenate([d.ts[parts.test.t[o:o + n]] for d, o, n in zip(
        data, np.cumsum([0, *parts.sizes["test"][:-1]]), parts.sizes["test"], strict=False)])
    return a, b, ends <= cut


def _member(name: str) -> Member:
    torch.manual_seed(0)
    model = REGISTRY[name](MemberConfig(F, CFG.lookback, CFG.hidden)).eval()
    if name == "vae":
        with torch.no_grad():
            model.regime_stats.copy_(torch.randn(3, 3))  # type: ignore[operator]
            model.centroids.copy_(torch.randn(3, model.latent) * 0.05)  # type: ignore[operator]
    return model


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_a_members_predictions_ignore_the_candles_after_them(name: str) -> None:
    a, b, past = _outputs(_member(name), name)
    assert past.sum() > 100 and (~past).sum() > 100
    np.testing.assert_allclose(a[past], b[past], rtol=0, atol=1e-6)
    assert not np.allclose(a[~past], b[~past])  # the perturbation reached the later windows


def test_the_check_catches_a_member_that_leaks_through_its_batch() -> None:
    torch.manual_seed(0)
    a, b, past = _outputs(LeakyMember(MemberConfig(F, CFG.lookback, CFG.hidden)).eval(), "leaky")
    assert np.abs(a[past] - b[past]).max() > 1e-4
