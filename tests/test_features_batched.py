"""The features take a batch of symbols in one pass, and a live window of
``history_rows(lookback)`` candles has the features of the whole history (what training and
the batched backtest compute)."""

from __future__ import annotations

import numpy as np
import pytest

from models.features import WARMUP, compute_features, history_rows, normalise, raw_features

H = 3_600_000


def _ohlcv(n: int, seed: int, price: float = 30_000.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = price * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    o = c * (1 + rng.normal(0, 0.002, n))
    h = np.maximum(o, c) * (1 + np.abs(rng.normal(0, 0.003, n)))
    low = np.minimum(o, c) * (1 - np.abs(rng.normal(0, 0.003, n)))
    v = rng.lognormal(5, 1, n)
    return np.stack([o, h, low, c, v], axis=1), np.arange(n, dtype=np.int64) * H


def _features(ohlcv: np.ndarray, ts: np.ndarray) -> np.ndarray:
    return normalise(raw_features(ohlcv, ts, H))


def test_a_batch_of_symbols_equals_each_symbol_alone() -> None:
    """Bit for bit, with one series holding a gap (its NaNs are not all leading, so it takes
    the one-at-a-time path inside the batch) and the others not."""
    series = [_ohlcv(700, seed) for seed in range(4)]
    ts = np.stack([s[1] for s in series])
    ts[2, 300:] += 3 * H  # three hours missing in the third symbol
    ohlcv = np.stack([s[0] for s in series])
    batch = _features(ohlcv, ts)
    for i in range(4):
        alone = _features(ohlcv[i], ts[i])
        np.testing.assert_array_equal(batch[i], alone)
    assert np.isnan(batch[2, 300:310]).any() and not np.isnan(batch[0, 300:310]).any()


@pytest.mark.parametrize("lookback", [8, 32, 48])
def test_a_live_window_has_the_features_of_the_whole_history(lookback: int) -> None:
    ohlcv, ts = _ohlcv(4000, seed=7)
    ts[2500:] += 2 * H  # a gap inside the history
    whole = _features(ohlcv, ts)
    keep = history_rows(lookback)
    worst, worst_short = 0.0, 0.0
    for t in range(keep, 4000, 53):
        win = _features(ohlcv[t - keep + 1 : t + 1], ts[t - keep + 1 : t + 1])[-lookback:]
        ref = whole[t - lookback + 1 : t + 1]
        np.testing.assert_array_equal(np.isnan(win), np.isnan(ref))
        worst = max(worst, float(np.nanmax(np.abs(win - ref))))
        short = WARMUP + lookback + 32  # the window the source kept before
        old = _features(ohlcv[t - short + 1 : t + 1], ts[t - short + 1 : t + 1])[-lookback:]
        worst_short = max(worst_short, float(np.nanmax(np.abs(old - ref))))
    assert worst < 1e-8
    assert worst_short > 1e-4  # a shorter window would not do: the test can fail


def test_long_series_stay_causal_across_the_prefix_sum_blocks() -> None:
    """Past 1,024 rows the rolling sums restart per block (models/features.py ``_blocked``):
    rows up to t still ignore everything after t."""
    ohlcv, ts = _ohlcv(5000, seed=8)
    base = compute_features(ohlcv, ts, H)
    for t in (1100, 2047, 2048, 3333):
        moved = ohlcv.copy()
        moved[t + 1 :, :4] *= 1.5
        moved[t + 1 :, 4] *= 7
        after = compute_features(moved, ts, H)
        np.testing.assert_array_equal(base[: t + 1], after[: t + 1])
        assert not np.array_equal(base[t + 1 :], after[t + 1 :])


def test_blocked_sums_keep_their_precision_on_long_expensive_series() -> None:
    """A 40,000-row series at 60,000 a unit: the tail's features equal those of the tail
    alone to 1e-10 (measured 2.5e-11; one prefix sum over the whole series gives 3.7e-10,
    so this fails without the blocks)."""
    ohlcv, ts = _ohlcv(40_000, seed=9, price=60_000.0)
    whole = _features(ohlcv, ts)
    keep = history_rows(32)
    tail = _features(ohlcv[-keep:], ts[-keep:])
    assert float(np.nanmax(np.abs(tail[-32:] - whole[-32:]))) < 1e-10


def test_the_recursive_filter_is_scipys_lfilter_bit_for_bit() -> None:
    """The smoothing loads scipy's C filter routine without importing ``scipy.signal``
    (half a second of a backtest's start): it must be that routine, called as scipy's
    ``lfilter`` calls it, and give its numbers to the last bit on both ways ``_smooth`` calls
    it (a batch with per-row initial conditions, one row with a list)."""
    import subprocess
    import sys

    from scipy.signal import lfilter

    from models.features import _lfilter

    fast = _lfilter()
    assert fast is not lfilter  # the direct load worked on this scipy
    rng = np.random.default_rng(3)
    for alpha in (2.0 / 13, 1.0 / 14, 0.5):
        v = rng.normal(100.0, 20.0, (5, 900))
        zi = (1.0 - alpha) * v[:, :1]
        got = fast([alpha], [1.0, alpha - 1.0], v, axis=-1, zi=zi)
        want = lfilter([alpha], [1.0, alpha - 1.0], v, axis=-1, zi=zi)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
        row = v[2]
        got1 = fast([alpha], [1.0, alpha - 1.0], row, zi=[(1.0 - alpha) * row[0]])
        want1 = lfilter([alpha], [1.0, alpha - 1.0], row, zi=[(1.0 - alpha) * row[0]])
        np.testing.assert_array_equal(got1[0], want1[0])
    # and the features come without scipy.signal in the process
    code = ("import sys, numpy as np; from models.features import raw_features; "
            "o = np.abs(np.random.default_rng(1).normal(100, 1, (400, 5))) + 1; "
            "raw_features(o, np.arange(400) * 3600000, 3600000); "
            "assert 'scipy.signal' not in sys.modules, 'scipy.signal was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def _zscores_by_hand(raw: np.ndarray) -> np.ndarray:
    """The documented normalisation, row by row: each scaled feature against the mean and
    population std of its own last ``NORM_WINDOW`` rows (NaN-skipping, at least half of
    them present), clipped to +-CLIP; NaN before a full window."""
    from models.features import _SCALED, CLIP, NORM_WINDOW

    out = raw.copy()
    for j in _SCALED:
        col = raw[:, j]
        for t in range(len(col)):
            win = col[max(0, t - NORM_WINDOW + 1) : t + 1]
            ok = win[~np.isnan(win)]
            if t < NORM_WINDOW - 1 or len(ok) < NORM_WINDOW // 2 or ok.std() <= 1e-9:
                out[t, j] = np.nan
            else:
                out[t, j] = np.clip((col[t] - ok.mean()) / ok.std(), -CLIP, CLIP)
    return out


@pytest.mark.parametrize("holes", [False, True], ids=["complete", "with-gaps"])
def test_the_zscores_are_the_trailing_windows_mean_and_std(holes: bool) -> None:
    """Every row, the last ones included (a live window, and each prefix-sum block's end),
    against the definition computed by hand: whole-series and live (``last``) alike. With
    ``holes`` the raw rows hold NaNs (a gap in the candles); without, the windows are
    complete, which the normalisation takes a shorter way for."""
    ohlcv, ts = _ohlcv(1400, seed=12)
    if holes:
        ts[900:] += 3 * H
    raw = raw_features(ohlcv, ts, H)
    want = _zscores_by_hand(raw)
    got = normalise(raw)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert float(np.nanmax(np.abs(got - want))) < 1e-6
    tail = raw[-(32 + 240 - 1):]  # what a live decision normalises
    assert holes or not np.isnan(tail).any()
    live = normalise(tail, last=32)
    np.testing.assert_array_equal(np.isnan(live), np.isnan(want[-32:]))
    assert float(np.nanmax(np.abs(live - want[-32:]))) < 1e-6
    assert not np.isnan(live[-2:]).all()  # the last rows are real numbers
