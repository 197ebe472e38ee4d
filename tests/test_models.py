"""The model ensemble: no look-ahead, learnability (planted structure vs noise), round trips
(save/load, batched vs one by one, seeded reproducibility), and the registry."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.domain import CandleSeries
from models.dataset import reference_timeline, split_by_time, symbol_data
from models.ensemble import Ensemble
from models.features import FEATURE_NAMES, WARMUP, compute_features
from models.labels import BarrierSpec, triple_barrier
from models.members import REGISTRY, MemberConfig
from models.registry import RegistryError, load_member, save_member
from models.train import TrainConfig, barrier_of, train_ensemble, train_member
from models.windows import expanding_folds, holdout, make_windows
from tests.helpers import ar1_series as series

H = 3_600_000
F = len(FEATURE_NAMES)


def arrays(s: CandleSeries) -> tuple[np.ndarray, np.ndarray]:
    o = np.array([[c.open, c.high, c.low, c.close, c.volume] for c in s.candles])
    return o, np.array([c.ts for c in s.candles], dtype=np.int64)


# ---- no look-ahead ------------------------------------------------------------------------
@pytest.mark.parametrize("t", [WARMUP + 5, WARMUP + 60, 700])
def test_features_ignore_the_future(t: int) -> None:
    o, ts = arrays(series(800, seed=1, gap_at=400))
    base = compute_features(o, ts, H)
    rng = np.random.default_rng(t)
    o2 = o.copy()
    o2[t + 1:, :4] *= rng.uniform(0.5, 2.0, size=(len(o) - t - 1, 1))  # the future, scrambled
    o2[t + 1:, 4] *= rng.uniform(0.1, 10, size=len(o) - t - 1)
    moved = compute_features(o2, ts, H)
    np.testing.assert_array_equal(base[: t + 1], moved[: t + 1])
    assert not np.array_equal(base[t + 1:], moved[t + 1:])  # the perturbation did something


def test_gap_is_explicit_and_returns_do_not_cross_it() -> None:
    o, ts = arrays(series(800, seed=2, gap_at=500))
    f = compute_features(o, ts, H)
    gap, r1 = FEATURE_NAMES.index("gap"), FEATURE_NAMES.index("logret_1")
    assert f[500, gap] == 1 and f[499, gap] == 0
    assert np.isnan(f[500, r1])  # no one-bar return across the hole


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_members_ignore_the_future(name: str) -> None:
    torch.manual_seed(0)
    L = 16
    model = REGISTRY[name](MemberConfig(F, L, 16)).eval()
    a = [series(700, seed=3, symbol="A/USDT"), series(700, seed=4, symbol="B/USDT")]
    t = 600
    outs = []
    for scramble in (False, True):
        xs = []
        for s in a:
            o, ts = arrays(s)
            if scramble:
                o = o.copy()
                o[t + 1:, :4] *= 1.7
            f = compute_features(o, ts, H)
            xs.append(f[t - L + 1: t + 1])
        with torch.no_grad():
            outs.append(model(torch.as_tensor(np.stack(xs))).numpy())
    np.testing.assert_array_equal(outs[0], outs[1])


# ---- learnability -------------------------------------------------------------------------
# barriers half an ATR away, one candle: the label is the sign of the next move when it is
# large (the AR(1) structure), a timeout when it is small
SMALL = TrainConfig(lookback=16, horizon=1, k_stop=0.5, k_target=0.5, cost=0.0, hidden=16,
                    epochs=6, patience=2,
                    train_rows=3000, val_rows=600, test_rows=900, ppo_passes=3,
                    max_train_samples=10**9, lr=3e-3)
BAR = barrier_of(SMALL)
TRAINABLE = sorted(n for n in REGISTRY if n != "vae")  # the VAE finds regimes, not direction


@pytest.fixture(scope="module")
def planted() -> list:
    return [symbol_data(series(4800, phi=0.6, seed=11, symbol="P/USDT"), BAR),
            symbol_data(series(4800, phi=0.6, seed=12, symbol="Q/USDT"), BAR)]


@pytest.fixture(scope="module")
def noise() -> list:
    return [symbol_data(series(4800, phi=0.0, seed=13, symbol="N/USDT"), BAR),
            symbol_data(series(4800, phi=0.0, seed=14, symbol="M/USDT"), BAR)]


def _parts(data: list):  # type: ignore[no-untyped-def]
    ref = reference_timeline(data)
    split = holdout(len(ref), SMALL.train_rows, SMALL.val_rows, SMALL.test_rows,
                    SMALL.lookback + SMALL.horizon)
    assert split is not None
    return split_by_time(data, split, ref, SMALL.lookback, SMALL.horizon)


@pytest.mark.parametrize("name", TRAINABLE)
def test_learns_planted_structure_but_not_noise(name: str, planted: list, noise: list) -> None:
    """AR(1) returns with phi = 0.6 make the next move's sign about 70% predictable; pure noise
    makes it 50%. Each member must clearly beat chance on the first and not on the second."""
    good = train_member(name, planted, _parts(planted), SMALL)
    acc = good.metrics["test_calibrated"]["accuracy"]
    assert acc > 0.60, f"{name} reached only {acc:.3f} on a learnable series"
    bad = train_member(name, noise, _parts(noise), SMALL)
    n = bad.metrics["test_calibrated"]["n"]
    acc_noise = bad.metrics["test_calibrated"]["accuracy"]
    assert acc_noise < 0.5 + 3 * math.sqrt(0.25 / n), f"{name} 'learned' noise: {acc_noise:.3f}"


def test_vae_regimes_separate_planted_moves(planted: list) -> None:
    """The regime ids are ordered by mean forward return (0 = the bearish one)."""
    r = train_member("vae", planted, _parts(planted), SMALL)
    stats = r.model.regime_stats.numpy()  # type: ignore[attr-defined]
    assert np.all(np.diff(stats[:, 1]) >= 0)
    assert len(set(np.round(stats[:, 1], 8))) > 1


def test_meta_learner_beats_chance_on_planted(planted: list) -> None:
    res = train_ensemble(planted, SMALL, ["lstm", "gru", "tcn"])
    assert res.meta_metrics["test"]["accuracy"] > 0.6
    assert res.meta_metrics["test"]["ece"] < 0.1
    # the combiner was chosen out of fold, and is no worse there than the best member
    m = res.meta_metrics
    assert m["combiner"] in m["combiners"] and len(m["combiners"]) == 3
    best = min(r["log_loss"] for r in m["members_oof"].values())
    assert m["oof"]["log_loss"] <= best + 1e-9
    assert res.oof is not None and len(res.oof.up) > 1000 and len(set(res.oof.fold)) == 3


# ---- round trips --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_save_load_reproduces_outputs_exactly(name: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = REGISTRY[name](MemberConfig(F, 16, 16)).eval()
    x = torch.randn(5, 16, F)
    digest = save_member(model, tmp_path / f"{name}.pt", 1.7, BAR)
    loaded, temp = load_member(tmp_path / f"{name}.pt", digest, BAR)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert temp == 1.7


def test_altered_checkpoint_is_refused(tmp_path: Path) -> None:
    model = REGISTRY["lstm"](MemberConfig(F, 16, 16))
    path = tmp_path / "lstm.pt"
    digest = save_member(model, path, 1.0, BAR)
    with path.open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(RegistryError, match="sha256"):
        load_member(path, digest, BAR)


def test_batched_ensemble_equals_members_one_by_one() -> None:
    torch.manual_seed(2)
    members = [REGISTRY[n](MemberConfig(F, 16, 16)).eval() for n in sorted(REGISTRY)]
    for m in members:
        if m.name == "vae":
            m.regime_stats.copy_(torch.randn(3, 3))  # type: ignore[operator]
    ens = Ensemble("t", members, [1.0] * len(members), np.zeros(len(members)), 0.0, 16, BAR)
    x = np.random.default_rng(0).normal(size=(7, 16, F)).astype(np.float32)
    outs, regime = ens.raw(x)
    with torch.no_grad():
        for i, m in enumerate(members):
            alone = m(torch.as_tensor(x)).numpy()
            np.testing.assert_allclose(outs[:, i], alone, rtol=1e-6, atol=1e-7)
        vae = members[[m.name for m in members].index("vae")]
        ids, sure = vae.confident_regime(torch.as_tensor(x))  # type: ignore[operator]
        assert np.array_equal(regime, torch.where(sure, ids, -1).numpy())


def test_seeded_cpu_training_is_reproducible(planted: list) -> None:
    cfg = replace(SMALL, epochs=2)
    parts = _parts(planted)
    a = train_member("gru", planted, parts, cfg)
    b = train_member("gru", planted, parts, cfg)
    pairs = zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True)
    for (k, v), (_, w) in pairs:
        assert torch.equal(v, w), k
    np.testing.assert_array_equal(a.test_logits, b.test_logits)


def test_windows_embargo_and_labels() -> None:
    o, ts = arrays(series(900, seed=5))
    f = compute_features(o, ts, H)
    w = make_windows(f, o[:, 3], 16, 4, 0.001)
    assert w.x.shape[1:] == (16, F) and not np.isnan(w.x).any()
    i = 10
    t = w.t[i]
    assert w.ret[i] == pytest.approx(math.log(o[t + 4, 3] / o[t, 3]), rel=1e-5)
    assert w.labeled[i] == (abs(w.ret[i]) > 0.001)
    # with barriers, the direction is the triple-barrier outcome and timeouts have none
    bars = triple_barrier(o[:, 1], o[:, 2], o[:, 3], np.full(len(o), 0.5), BarrierSpec(1, 1, 4))
    wb = make_windows(f, o[:, 3], 16, 4, rows=None, barriers=bars)
    assert (
        (wb.labeled == (bars.label[wb.t] != 0)).all() and wb.labeled.any() and not wb.labeled.all()
    )
    assert (wb.up[wb.labeled] == (bars.label[wb.t][wb.labeled] > 0)).all()
    sp = holdout(len(ts), 400, 100, 100, 20)
    assert sp is not None and sp.val[0] - sp.train[1] == 20 and sp.test[0] - sp.val[1] == 20
    assert sp.test == (800, 900) and sp.train[0] == 0
    assert holdout(len(ts), 661, 100, 100, 20) is None  # 660 rows are all there is to train on


@pytest.mark.parametrize(
    "n,first,val,emb,folds",
    [
        (10_000, 3000, 500, 40, 4),
        (45_024, 8760, 2160, 56, 4),
        (1_003, 300, 100, 7, 3),
        (700, 300, 100, 7, 1),
    ],
)
def test_expanding_folds_tile_the_file_after_the_first_span(
    n: int, first: int, val: int, emb: int, folds: int
) -> None:
    """The test parts are consecutive and cover every row from the end of the first training
    span's validation part to the end of the file; each fold trains from the first row up to
    an embargo before its validation part, which ends an embargo before its test part."""
    fs = expanding_folds(n, first, val, emb, folds)
    assert len(fs) == folds
    assert fs[0].test[0] == first + val + 2 * emb and fs[-1].test[1] == n
    assert all(a.test[1] == b.test[0] for a, b in zip(fs, fs[1:], strict=False))
    sizes = [f.test[1] - f.test[0] for f in fs]
    assert max(sizes) - min(sizes) <= 1
    for f in fs:
        assert f.train[0] == 0 and f.val[1] - f.val[0] == val
        assert f.val[0] - f.train[1] == emb and f.test[0] - f.val[1] == emb
    assert fs[0].train[1] == first
    assert [f.train[1] for f in fs] == sorted({f.train[1] for f in fs})  # strictly expanding
    assert expanding_folds(first + val + 2 * emb + folds - 1, first, val, emb, folds) == []


def test_the_train_part_is_capped_evenly_over_an_expanding_history(planted: list) -> None:
    """An expanding training span costs what the preset says however long the file: with a
    cap, the train part holds at most that many windows, spread over the whole history (not
    just its end), while validation and test are untouched."""
    ref = reference_timeline(planted)
    split = holdout(len(ref), 1000, 300, 300, SMALL.lookback + SMALL.horizon)
    assert split is not None
    full = split_by_time(planted, split, ref, SMALL.lookback, SMALL.horizon)
    capped = split_by_time(planted, split, ref, SMALL.lookback, SMALL.horizon, max_train=600)
    assert len(full.train) > 3000 and 500 <= len(capped.train) <= 600
    first = capped.train.t[: capped.sizes["train"][0]]
    span = full.train.t[: full.sizes["train"][0]]
    assert first.min() - span.min() < 20 and span.max() - first.max() < 20
    assert np.all(np.diff(first) > 0)
    assert len(capped.val) == len(full.val) and len(capped.test) == len(full.test)
    np.testing.assert_array_equal(capped.test.t, full.test.t)


def test_tft_quantile_heads_are_ordered_and_cover_their_levels(planted: list) -> None:
    """Each head is trained by the pinball loss at its own level: on the untouched test
    windows about 10 % of forward returns fall below the 10 % head and about 90 % below the
    90 % head, and the heads never cross."""
    parts = _parts(planted)
    r = train_member("tft", planted, parts, SMALL)
    with torch.no_grad():
        q = r.model.quantiles(torch.as_tensor(parts.test.x)).numpy()  # type: ignore[operator]
    ret = parts.test.ret
    assert (np.diff(q, axis=1) >= 0).all()
    below = [(ret < q[:, i]).mean() for i in range(3)]
    assert 0.04 < below[0] < 0.2 and 0.35 < below[1] < 0.65 and 0.8 < below[2] < 0.96, below
    # what the evaluate report plots: a weight per feature and an attention per step, each
    # a distribution, read without changing the model's answers
    before = r.model(torch.as_tensor(parts.test.x[:64]))
    w, a = r.model.interpret(torch.as_tensor(parts.test.x))  # type: ignore[operator]
    assert w.shape == (F,) and a.shape == (SMALL.lookback,)
    assert float(w.sum()) == pytest.approx(1, abs=1e-5)
    assert float(a.sum()) == pytest.approx(1, abs=1e-5)
    assert bool((w > 0).all()) and not r.model.training
    assert torch.equal(r.model(torch.as_tensor(parts.test.x[:64])), before)


def test_ppo_pays_fees_on_position_changes_and_keeps_its_position_across_chunks() -> None:
    """An agent held long (its policy fixed: a huge bias, no learning) earns every return and
    pays the fee once per episode: the position carries across the update chunks (10 steps
    here), and only the gap at step 55 ends an episode and sends it back to flat."""
    from models.members.ppo import PPOAgent

    torch.manual_seed(0)
    agent = PPOAgent(MemberConfig(F, 4, 8))
    with torch.no_grad():
        agent.pi.weight.zero_()
        agent.pi.bias.copy_(torch.tensor([-30.0, 30.0]))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 4, F)).astype(np.float32)
    ret = rng.normal(scale=0.01, size=100)
    starts = np.zeros(100, bool)
    starts[55] = True
    fee = 0.003
    [mean] = agent.fit(x, ret, fee=fee, passes=1, horizon=10, lr=0.0, starts=starts)
    assert mean * 100 == pytest.approx(100 * (ret.sum() - 2 * fee), rel=1e-5)
    # the position is part of what the policy sees: a weight on it moves the long
    # propensity of a held position, not the member's answer (always for the flat agent)
    before = agent(torch.as_tensor(x[:3]))[:, 0]
    with torch.no_grad():
        agent.pi.weight[1, -1] = -100.0
    assert torch.allclose(agent(torch.as_tensor(x[:3]))[:, 0], before)
    held, _ = agent._policy(agent._encode(torch.as_tensor(x[:3])), torch.ones(3))
    assert bool(((held[:, 1] - held[:, 0]) < before).all())
