"""The statistics behind the evaluation report's verdicts (models/significance.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from models.significance import block_bootstrap, diebold_mariano, holm, long_run_variance


def test_dm_one_step_is_the_paired_t_test() -> None:
    """Textbook identity: for one-step forecasts (no autocorrelation allowed for) the
    Harvey-Leybourne-Newbold corrected DM statistic is the paired t statistic of the loss
    differential, with n - 1 degrees of freedom."""
    rng = np.random.default_rng(3)
    a, b = rng.gamma(2.0, 1.0, 300), rng.gamma(2.0, 0.95, 300)
    dm = diebold_mariano(a, b, horizon=1)
    t = stats.ttest_rel(a, b)
    assert dm.statistic == pytest.approx(float(t.statistic), rel=1e-10)
    assert dm.p_value == pytest.approx(float(t.pvalue), rel=1e-8)


def test_long_run_variance_by_hand() -> None:
    """Newey-West with Bartlett weights on a short series, written out term by term."""
    d = np.array([0.5, -0.2, 0.9, 0.1, -0.4, 0.3, 0.8, -0.1])
    x = d - d.mean()
    n = len(x)
    g = [sum(x[t] * x[t - k] for t in range(k, n)) / n for k in range(3)]
    by_hand = g[0] + 2 * (2 / 3) * g[1] + 2 * (1 / 3) * g[2]
    assert long_run_variance(d, 2) == pytest.approx(by_hand, rel=1e-12)
    uniform = g[0] + 2 * g[1] + 2 * g[2]
    assert long_run_variance(d, 2, "uniform") == pytest.approx(uniform, rel=1e-12)


def test_dm_widens_for_overlapping_forecasts() -> None:
    """Overlapping H-step losses are autocorrelated: ignoring it overstates significance.
    With a moving-average differential the H-step statistic is smaller than the 1-step one."""
    rng = np.random.default_rng(4)
    e = rng.normal(0.02, 1.0, 2000)
    d = np.convolve(e, np.ones(12) / 12, mode="valid")  # MA(11): overlap of 12 candles
    one = diebold_mariano(d, np.zeros_like(d), horizon=1)
    twelve = diebold_mariano(d, np.zeros_like(d), horizon=12)
    assert abs(twelve.statistic) < abs(one.statistic) / 2
    assert twelve.p_value > one.p_value


def test_dm_size_under_the_null() -> None:
    """Equal forecasts: about 5 % of tests reject at 5 % (not 0, not 30 %)."""
    rng = np.random.default_rng(5)
    rejections = 0
    for _ in range(400):
        e = rng.normal(0, 1, 1011)
        d = np.convolve(e, np.ones(12) / 12, mode="valid")
        rejections += diebold_mariano(d, np.zeros_like(d), horizon=12).p_value < 0.05
    assert 0.02 < rejections / 400 < 0.09


def test_holm() -> None:
    # sorted: 0.001 <= 0.05/4, 0.012 <= 0.05/3, 0.03 > 0.05/2: stop there
    got = holm({"a": 0.03, "b": 0.001, "c": 0.012, "d": 0.04, "e": float("nan")})
    assert got == {"a": False, "b": True, "c": True, "d": False, "e": False}
    assert holm({"x": 0.04}) == {"x": True}


def test_block_bootstrap_covers_a_known_sharpe() -> None:
    """AR(1) returns with a known mean and variance: the 95 % interval covers the true
    annualised Sharpe in roughly 95 % of independent series."""
    rng = np.random.default_rng(6)
    phi, sigma, mu, n, per_year = 0.3, 0.01, 0.0008, 1500, 8760.0
    true_sd = sigma / math.sqrt(1 - phi ** 2)
    true = mu / true_sd * math.sqrt(per_year)
    covered = 0
    trials = 150
    for k in range(trials):
        e = rng.normal(0, sigma, n + 50)
        r = np.empty(n + 50)
        r[0] = e[0]
        for t in range(1, n + 50):
            r[t] = phi * r[t - 1] + e[t]
        sh, _ = block_bootstrap(r[50:] + mu, per_year, draws=400, seed=k)
        covered += sh.covers(true)
    assert 0.85 <= covered / trials <= 0.995


def test_block_bootstrap_return_interval_contains_the_estimate() -> None:
    r = np.random.default_rng(7).normal(0.001, 0.01, 800)
    sh, ret = block_bootstrap(r, 8760.0, draws=500)
    assert ret.low < ret.estimate < ret.high
    assert ret.estimate == pytest.approx(float(np.prod(1 + r) - 1))
    assert sh.low < sh.estimate < sh.high


def test_verdicts_name_what_is_significant_and_say_so_when_nothing_is() -> None:
    from models.significance import log_losses, verdicts

    rng = np.random.default_rng(8)
    n = 3000
    truth = rng.uniform(0.2, 0.6, n)
    y = (rng.uniform(size=n) < truth).astype(float)
    base = np.full(n, y.mean())
    losses = {"base_rate": log_losses(base, y), "skilled": log_losses(truth, y),
              "noisy": log_losses(np.clip(base + rng.normal(0, 0.05, n), 0.01, 0.99), y),
              "momentum_sign": log_losses(np.clip(base + 0.01, 0, 1), y)}
    flat = {"flat": np.zeros(500), "drift": rng.normal(0.002, 0.01, 500)}
    v = verdicts(losses, "base_rate", ("momentum_sign",), 1, flat, 8760.0, block=5)
    assert v.beats_base["skilled"] and not v.beats_base["noisy"]
    assert v.worse_than_base["noisy"]
    assert "skilled" in v.sentence() and "drift" in v.sentence()
    quiet = verdicts({"base_rate": losses["base_rate"], "momentum_sign": losses["momentum_sign"],
                      "noisy2": log_losses(np.clip(base + rng.normal(0, 0.002, n), 0, 1), y)},
                     "base_rate", ("momentum_sign",), 1, {"flat": np.zeros(500)}, 8760.0, 5)
    assert quiet.sentence().startswith("Nothing here is distinguishable from noise")


def test_bootstrap_p_value_of_zero_matches_the_interval_and_holds_its_size() -> None:
    """The p-value of zero agrees with the percentile interval (p < 5 % exactly when the 95 %
    interval excludes zero, away from ties), and on series whose true Sharpe is zero it
    rejects about 5 % of the time."""
    from models.significance import block_bootstrap

    rng = np.random.default_rng(21)
    rejected = 0
    agree = 0
    trials = 200
    for k in range(trials):
        r = rng.normal(0, 0.01, 600)
        sh, ret = block_bootstrap(r - r.mean() + rng.normal(0, 0.01 / np.sqrt(600)), 8760.0,
                                  block=5, draws=1000, seed=k)
        rejected += sh.p_zero < 0.05
        agree += (sh.p_zero < 0.05) == (sh.low > 0 or sh.high < 0) or abs(sh.p_zero - 0.05) < 0.01
        assert 0 < sh.p_zero <= 1 and 0 < ret.p_zero <= 1
    assert agree == trials
    assert 0.02 <= rejected / trials <= 0.09, rejected


def test_one_lucky_strategy_among_many_is_not_called_significant() -> None:
    """Thirty strategies with no edge: one of them usually has a raw 95 % Sharpe interval
    above zero, which is chance. After Holm's correction for thirty the verdict must not
    name it as above zero, and must say why it is not; a real edge among them still counts."""
    from models.significance import log_losses, verdicts

    rng = np.random.default_rng(3)
    y = (rng.uniform(size=2000) < 0.4).astype(float)
    losses = {"base_rate": log_losses(np.full(2000, 0.4), y),
              "momentum_sign": log_losses(np.full(2000, 0.41), y)}
    for seed in range(20):
        g = np.random.default_rng(seed)
        noise = {f"s{i}": g.normal(0, 0.01, 800) for i in range(30)}
        v = verdicts(losses, "base_rate", ("momentum_sign",), 1, noise, 8760.0, block=5)
        lucky = [k for k, (s, _) in v.intervals.items() if s.low > 0]
        if lucky:
            break
    assert lucky, "no seed gave a raw interval above zero: the test would prove nothing"
    assert not any(v.sharpe_significant.values())
    text = v.sentence()
    assert text.startswith("Nothing here is distinguishable from noise")
    assert lucky[0] in text and "by chance" in text and "30 strategies" in text
    edge = {**noise, "edge": g.normal(0.003, 0.01, 800)}
    v2 = verdicts(losses, "base_rate", ("momentum_sign",), 1, edge, 8760.0, block=5)
    assert v2.sharpe_significant["edge"]
    assert ("Sharpe above zero at 5 % after Holm's correction for 31 strategies: edge"
            in v2.sentence())
