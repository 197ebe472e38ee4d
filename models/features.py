"""Causal features: the one implementation used for training, backtests and live trading.

Every value at row t is computed from candles 0..t only. Normalisation is causal too: each raw
feature is z-scored against the rolling mean and standard deviation of its own past
(``NORM_WINDOW`` rows up to and including t), then clipped. Warm-up rows are NaN and are never
used: windows that contain a NaN are dropped in training and produce no signal live.

Gaps are explicit: the ``gap`` feature is 1 on the first candle after missing candles, and
returns are not computed across a hole (they are NaN there and in the rows that would reach
back over it), so a jump across an exchange outage is never mistaken for a one-bar move.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from models.labels import BarrierSpec

RET_HORIZONS = (1, 3, 6, 12, 24)
VOL_WINDOW = 24
ATR_PERIOD = 14
RSI_PERIOD = 14
BB_WINDOW = 20
VOL_Z_WINDOW = 48
NORM_WINDOW = 240
CLIP = 5.0

FEATURE_NAMES: tuple[str, ...] = (
    *(f"logret_{h}" for h in RET_HORIZONS),
    "realized_vol", "atr_pct", "rsi", "macd", "macd_signal", "bb_pctb", "volume_z",
    "body", "upper_wick", "lower_wick", "tod_sin", "tod_cos", "dow_sin", "dow_cos", "gap",
)
# already on a fixed scale: not z-scored
_UNSCALED = {"bb_pctb", "rsi", "body", "upper_wick", "lower_wick", "tod_sin", "tod_cos",
             "dow_sin", "dow_cos", "gap"}


def feature_spec(barrier: BarrierSpec) -> dict[str, object]:
    """What a model's inputs and target are: the features and the triple barrier."""
    return {"names": FEATURE_NAMES, "ret": RET_HORIZONS, "vol": VOL_WINDOW, "atr": ATR_PERIOD,
            "rsi": RSI_PERIOD, "bb": BB_WINDOW, "volz": VOL_Z_WINDOW, "norm": NORM_WINDOW,
            "clip": CLIP, "version": 2, "target": "triple_barrier", "barrier": barrier.to_dict()}


def feature_spec_hash(barrier: BarrierSpec) -> str:
    """Identifies the features and the barriers a model was trained on (stored in the
    registry and every checkpoint): a model trained for other barriers is refused at load."""
    blob = json.dumps(feature_spec(barrier), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# prefix sums restart every _BLOCK rows (each block re-reads the w - 1 rows before it), so their
# rounding is that of a window of about this size whatever the series' length: a 45,000-candle
# backtest and a live window of a few hundred rows get the same values to ~1e-12
_BLOCK = 1024


def _blocked(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, w: int,
             axis: int) -> np.ndarray:
    """``fn`` (a trailing-window function along ``axis``) over blocks of ``_BLOCK`` rows, each
    with the ``w - 1`` rows before it as history. Row t still depends on rows <= t only."""
    t = x.shape[axis]
    if t <= _BLOCK + w:
        return fn(x)
    xs = np.moveaxis(x, axis, 0)
    out = np.empty(xs.shape, dtype=np.float64)
    for s in range(0, t, _BLOCK):
        e = min(t, s + _BLOCK)
        lo = max(0, s - w + 1)
        out[s:e] = np.moveaxis(fn(np.moveaxis(xs[lo:e], 0, axis)), axis, 0)[s - lo:]
    return np.moveaxis(out, 0, axis)


def _rolling(x: np.ndarray, w: int, fn: str) -> np.ndarray:
    """Trailing window sum, mean or std along the last axis including the current row, from
    prefix sums (so row t depends on rows <= t only); NaN until ``w`` values exist or where a
    NaN is in the window. Any leading axes are a batch (symbols)."""
    return _blocked(lambda b: _rolling_block(b, w, fn), x.astype(np.float64), w, -1)


def _rolling_block(x: np.ndarray, w: int, fn: str) -> np.ndarray:
    out = np.full_like(x, np.nan)
    if x.shape[-1] < w:
        return out
    bad = np.isnan(x)
    gaps = bool(bad.any())  # usually none: then no window holds a NaN
    xf = np.where(bad, 0.0, x) if gaps else x
    zero = np.zeros(x.shape[:-1] + (1,))
    c1 = np.concatenate((zero, np.cumsum(xf, axis=-1)), axis=-1)
    s1 = c1[..., w:] - c1[..., :-w]
    if fn == "sum":
        res = s1
    elif fn == "mean":
        res = s1 / w
    else:  # std (population)
        c2 = np.concatenate((zero, np.cumsum(xf * xf, axis=-1)), axis=-1)
        s2 = c2[..., w:] - c2[..., :-w]
        m = s1 / w
        res = np.sqrt(np.maximum(s2 / w - m * m, 0.0))
    if gaps:
        nb = np.concatenate((zero, np.cumsum(bad, axis=-1, dtype=np.float64)), axis=-1)
        res[(nb[..., w:] - nb[..., :-w]) > 0] = np.nan
    out[..., w - 1:] = res
    return out


@functools.cache
def _lfilter() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """scipy's ``lfilter`` with initial conditions, for a recursive filter (``len(a) > 1``),
    loaded on first use. ``scipy.signal`` takes about half a second of CPU to import (scipy's
    stats, sparse and more), a tenth of a whole backtest's start, for the one C routine that
    its ``lfilter`` hands such a filter to (``_sigtools._linear_filter(b, a, x, axis, zi)``,
    after ``np.atleast_1d``/``np.asarray``): that extension is loaded on its own, and where
    it cannot be (another scipy layout), ``scipy.signal.lfilter`` is used. Both give the same
    numbers bit for bit (tests/test_features_batched.py)."""
    try:
        import importlib.machinery
        import importlib.util
        from pathlib import Path

        import scipy

        name = "scipy.signal._sigtools"
        path = next((Path(scipy.__file__).parent / "signal").glob("_sigtools.*.so"))
        loader = importlib.machinery.ExtensionFileLoader(name, str(path))
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        if spec is None:
            raise ImportError(name)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        core = module._linear_filter
    except (ImportError, StopIteration, AttributeError, OSError):
        from scipy.signal import lfilter as public

        return public

    def lfilter(b: Any, a: Any, x: Any, axis: int = -1,
                zi: Any = None) -> tuple[np.ndarray, np.ndarray]:
        return core(np.atleast_1d(b), np.atleast_1d(a), np.asarray(x), axis, np.asarray(zi))

    return lfilter


def _smooth(x: np.ndarray, alpha: float, carry: bool) -> np.ndarray:
    """Exponential smoothing along the last axis that starts at the first value and skips
    NaNs: a NaN row keeps the running value (``carry``) or is NaN. A causal IIR filter
    (scipy's lfilter), so row t depends on rows <= t only. Leading axes are a batch: series
    whose NaNs all lead (the usual case) are filtered together, each from its first value,
    with the same arithmetic as one at a time."""
    lfilter = _lfilter()
    x = x.astype(np.float64)
    out = np.full_like(x, np.nan)
    flat, res = x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1])
    valid = ~np.isnan(flat)
    first = np.where(valid.any(axis=1), valid.argmax(axis=1), -1)
    n_valid = valid.sum(axis=1)
    leading = (first >= 0) & (n_valid == flat.shape[1] - first)
    for f in np.unique(first[leading]):
        rows = np.flatnonzero(leading & (first == f))
        v = flat[rows, f:]
        res[rows, f:], _ = lfilter([alpha], [1.0, alpha - 1.0], v, axis=-1,
                                   zi=(1.0 - alpha) * v[:, :1])
    for r in np.flatnonzero((first >= 0) & ~leading):
        ok = valid[r]
        v = flat[r, ok]
        y, _ = lfilter([alpha], [1.0, alpha - 1.0], v, zi=[(1.0 - alpha) * v[0]])
        res[r, ok] = y
        if carry:
            idx = np.where(ok, np.arange(len(ok)), -1)
            np.maximum.accumulate(idx, out=idx)
            seen = idx >= 0
            res[r, seen] = res[r, idx[seen]]
    return out


def _ema(x: np.ndarray, span: int) -> np.ndarray:
    return _smooth(x, 2.0 / (span + 1), carry=True)


def _wilder(x: np.ndarray, period: int) -> np.ndarray:
    return _smooth(x, 1.0 / period, carry=False)


# rows before a row that its finite-window raw features read (returns, realized volatility,
# Bollinger band, volume z-score): a ``tail`` computes those on the tail plus this many rows
_REACH = max(max(RET_HORIZONS), VOL_WINDOW + 1, BB_WINDOW, VOL_Z_WINDOW)


def raw_features(ohlcv: np.ndarray, ts_ms: np.ndarray, step_ms: int,
                 tail: int | None = None) -> np.ndarray:
    """Un-normalised features, shape [..., T, F]. ``ohlcv`` is [..., T, 5] (open, high, low,
    close, volume) in time order; ``ts_ms`` the open times [..., T]. Leading axes are a batch
    of series of one length (symbols), computed in one pass.

    ``tail``: only the last ``tail`` rows [..., tail, F]. The exponential smoothings still
    run over every row (they remember the whole window); the finite-window features are
    computed on the tail and the ``_REACH`` rows before it only (live windows)."""
    o, h, low, c, v = (ohlcv[..., i].astype(np.float64) for i in range(5))
    t = c.shape[-1]
    s = 0 if tail is None else max(0, t - tail - _REACH)
    gap = np.zeros(c.shape)
    gap[..., 1:] = (np.diff(ts_ms, axis=-1) > step_ms).astype(np.float64)
    # the smoothings, over every row
    nan_col = np.full(c.shape[:-1] + (1,), np.nan)
    prev_c = np.concatenate((nan_col, c[..., :-1]), axis=-1)
    prev_c[gap > 0] = np.nan  # no true range across a hole
    tr = np.fmax(h - low, np.fmax(np.abs(h - prev_c), np.abs(low - prev_c)))
    cols: dict[str, np.ndarray] = {"atr_pct": (_wilder(tr, ATR_PERIOD) / c)[..., s:]}
    d = np.diff(c, prepend=nan_col, axis=-1)
    d[gap > 0] = np.nan
    up = _wilder(np.where(np.isnan(d), np.nan, np.maximum(d, 0)), RSI_PERIOD)[..., s:]
    dn = _wilder(np.where(np.isnan(d), np.nan, np.maximum(-d, 0)), RSI_PERIOD)[..., s:]
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["rsi"] = np.where(up + dn > 0, up / (up + dn), 0.5) * 2 - 1
    macd = (_ema(c, 12) - _ema(c, 26)) / c
    cols["macd"] = macd[..., s:]
    cols["macd_signal"] = (macd - _ema(macd, 9))[..., s:]
    # the finite windows, from row s on
    rows = np.arange(s, t)
    # index of the last gap at or before each row: returns may not reach back past it
    last_gap = np.maximum.accumulate(np.where(gap > 0, np.arange(t), 0), axis=-1)[..., s:]
    o, h, low, c, v = (x[..., s:] for x in (o, h, low, c, v))
    gap, ts_ms = gap[..., s:], ts_ms[..., s:]
    logc = np.log(c)
    cols["gap"] = gap
    for hzn in RET_HORIZONS:
        r = np.full(c.shape, np.nan)
        r[..., hzn:] = logc[..., hzn:] - logc[..., :-hzn]
        r[rows - hzn < last_gap] = np.nan
        cols[f"logret_{hzn}"] = r
    cols["realized_vol"] = _rolling(cols["logret_1"], VOL_WINDOW, "std")
    mean = _rolling(c, BB_WINDOW, "mean")
    sd = _rolling(c, BB_WINDOW, "std")
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["bb_pctb"] = np.clip(np.where(sd > 0, (c - (mean - 2 * sd)) / (4 * sd), 0.5), -1, 2)
    lv = np.log1p(v)
    vm, vs = _rolling(lv, VOL_Z_WINDOW, "mean"), _rolling(lv, VOL_Z_WINDOW, "std")
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["volume_z"] = np.where(vs > 0, (lv - vm) / vs, 0.0)
        rng = np.where(h - low > 0, h - low, np.nan)
        cols["body"] = np.nan_to_num((c - o) / rng)
        cols["upper_wick"] = np.nan_to_num((h - np.maximum(o, c)) / rng)
        cols["lower_wick"] = np.nan_to_num((np.minimum(o, c) - low) / rng)
    day = (ts_ms % 86_400_000) / 86_400_000
    week = ((ts_ms // 86_400_000 + 3) % 7) / 7  # 1970-01-01 was a Thursday; 0 = Monday
    cols["tod_sin"], cols["tod_cos"] = np.sin(2 * np.pi * day), np.cos(2 * np.pi * day)
    cols["dow_sin"], cols["dow_cos"] = np.sin(2 * np.pi * week), np.cos(2 * np.pi * week)
    k = t - s if tail is None else min(tail, t - s)
    # stacked feature-major (contiguous copies), handed out as [..., T, F] (a view): the
    # same values; stacking along the last axis writes every value strided, and the rows
    # before the tail need not be stacked at all
    out = np.stack([np.broadcast_to(cols[n], c.shape)[..., -k:] for n in FEATURE_NAMES])
    return np.moveaxis(out, 0, -1)


_SCALED = [j for j, name in enumerate(FEATURE_NAMES) if name not in _UNSCALED]


def normalise(raw: np.ndarray, last: int | None = None) -> np.ndarray:
    """Causal rolling z-score per feature (its own last ``NORM_WINDOW`` rows), clipped.
    All features (and any leading batch axes) at once: prefix sums along time (axis -2), so
    row t depends on rows <= t only. ``last``: only the last ``last`` rows (a live window)."""
    if last is not None:
        out = raw[..., -last:, :].copy()
        x = raw[..., -(last + NORM_WINDOW - 1):, _SCALED].astype(np.float64)
        out[..., _SCALED] = _normalise_block(x, last)
        return out
    out = raw.copy()
    x = raw[..., _SCALED].astype(np.float64)
    out[..., _SCALED] = _blocked(_normalise_block, x, NORM_WINDOW, -2)
    return out


def _normalise_block(x: np.ndarray, last: int | None = None) -> np.ndarray:
    """z-scores of every row of ``x`` [..., T, C] (NaN before a full window), or of its last
    ``last`` rows only."""
    w = NORM_WINDOW
    t = x.shape[-2]
    rows = t if last is None else min(last, t)
    if t < w:
        return np.full(x.shape[:-2] + (rows, x.shape[-1]), np.nan)
    k = min(rows, t - w + 1)  # rows with a full window behind them
    valid = ~np.isnan(x)
    complete = bool(valid.all())  # the usual live window: every count is the window
    xf = x if complete else np.where(valid, x, 0.0)
    zero = np.zeros(x.shape[:-2] + (1, x.shape[-1]))
    hi, lo = slice(t + 1 - k, t + 1), slice(t + 1 - k - w, t + 1 - w)

    def window_sums(part: np.ndarray) -> np.ndarray:
        c = np.concatenate((zero, np.cumsum(part, axis=-2)), axis=-2)
        return c[..., hi, :] - c[..., lo, :]

    # the counts summed as floats (exact: whole numbers far below 2**53; a boolean cumsum
    # is twice as slow), or the window itself where nothing is missing: the same quotients
    n = np.float64(w) if complete else window_sums(valid.astype(np.float64))
    s1, s2 = window_sums(xf), window_sums(xf * xf)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / n
        var = np.maximum(s2 / n - mean * mean, 0.0)
        z = (x[..., t - k :, :] - mean) / np.sqrt(var)
    z[~(n >= w // 2) | ~(var > 1e-18)] = np.nan
    z = np.clip(z, -CLIP, CLIP)
    if k == rows:
        return z
    return np.concatenate((np.full(x.shape[:-2] + (rows - k, x.shape[-1]), np.nan), z), axis=-2)


def compute_features(ohlcv: np.ndarray, ts_ms: np.ndarray, step_ms: int) -> np.ndarray:
    """Normalised causal features [T, F] as float32; NaN where not yet defined."""
    return normalise(raw_features(ohlcv, ts_ms, step_ms)).astype(np.float32)


WARMUP = NORM_WINDOW + max(RET_HORIZONS) + VOL_WINDOW  # rows before every feature is defined
# rows the exponential smoothings need to forget where they started: the slowest (the 26-candle
# EMA inside MACD) keeps (25/27)^n of its start, below 1e-12 after 360 rows. A window whose
# normalised rows each have this many rows of raw history before their own NORM_WINDOW has the
# features of the whole series (what training sees) to ~1e-9 (tests/test_features_batched.py)
SETTLE = 360


def history_rows(lookback: int) -> int:
    """Candles a live window keeps so that its last ``lookback`` rows of features equal those
    computed over the whole history: live, backtest and training then see the same inputs."""
    return lookback + NORM_WINDOW + SETTLE
