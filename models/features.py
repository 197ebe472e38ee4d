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

import hashlib
import json

import numpy as np
from scipy.signal import lfilter

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


def _rolling(x: np.ndarray, w: int, fn: str) -> np.ndarray:
    """Trailing window sum, mean or std including the current row, from prefix sums (so row t
    depends on rows <= t only); NaN until ``w`` values exist or where a NaN is in the window."""
    x = x.astype(np.float64)
    out = np.full_like(x, np.nan)
    if len(x) < w:
        return out
    bad = np.isnan(x)
    xf = np.where(bad, 0.0, x)
    c1 = np.concatenate(([0.0], np.cumsum(xf)))
    nb = np.concatenate(([0], np.cumsum(bad)))
    s1 = c1[w:] - c1[:-w]
    has_nan = (nb[w:] - nb[:-w]) > 0
    if fn == "sum":
        res = s1
    elif fn == "mean":
        res = s1 / w
    else:  # std (population)
        c2 = np.concatenate(([0.0], np.cumsum(xf * xf)))
        s2 = c2[w:] - c2[:-w]
        m = s1 / w
        res = np.sqrt(np.maximum(s2 / w - m * m, 0.0))
    res[has_nan] = np.nan
    out[w - 1:] = res
    return out


def _smooth(x: np.ndarray, alpha: float, carry: bool) -> np.ndarray:
    """Exponential smoothing that starts at the first value and skips NaNs: a NaN row keeps
    the running value (``carry``) or is NaN. A causal IIR filter (scipy's lfilter), so row t
    depends on rows <= t only."""
    x = x.astype(np.float64)
    out = np.full_like(x, np.nan)
    valid = ~np.isnan(x)
    if not valid.any():
        return out
    v = x[valid]
    y, _ = lfilter([alpha], [1.0, alpha - 1.0], v, zi=[(1.0 - alpha) * v[0]])
    out[valid] = y
    if carry:
        idx = np.where(valid, np.arange(len(x)), -1)
        np.maximum.accumulate(idx, out=idx)
        ok = idx >= 0
        out[ok] = out[idx[ok]]
    return out


def _ema(x: np.ndarray, span: int) -> np.ndarray:
    return _smooth(x, 2.0 / (span + 1), carry=True)


def _wilder(x: np.ndarray, period: int) -> np.ndarray:
    return _smooth(x, 1.0 / period, carry=False)


def raw_features(ohlcv: np.ndarray, ts_ms: np.ndarray, step_ms: int) -> np.ndarray:
    """Un-normalised features, shape [T, F]. ``ohlcv`` is [T, 5] (open, high, low, close,
    volume) in time order; ``ts_ms`` the open times."""
    o, h, low, c, v = (ohlcv[:, i].astype(np.float64) for i in range(5))
    t = len(c)
    logc = np.log(c)
    gap = np.zeros(t)
    gap[1:] = (np.diff(ts_ms) > step_ms).astype(np.float64)
    # index of the last gap at or before each row: returns may not reach back past it
    last_gap = np.maximum.accumulate(np.where(gap > 0, np.arange(t), 0))
    cols: dict[str, np.ndarray] = {"gap": gap}
    for hzn in RET_HORIZONS:
        r = np.full(t, np.nan)
        r[hzn:] = logc[hzn:] - logc[:-hzn]
        r[np.arange(t) - hzn < last_gap] = np.nan
        cols[f"logret_{hzn}"] = r
    cols["realized_vol"] = _rolling(cols["logret_1"], VOL_WINDOW, "std")
    prev_c = np.concatenate(([np.nan], c[:-1]))
    prev_c[gap > 0] = np.nan  # no true range across a hole
    tr = np.fmax(h - low, np.fmax(np.abs(h - prev_c), np.abs(low - prev_c)))
    cols["atr_pct"] = _wilder(tr, ATR_PERIOD) / c
    d = np.diff(c, prepend=np.nan)
    d[gap > 0] = np.nan
    up = _wilder(np.where(np.isnan(d), np.nan, np.maximum(d, 0)), RSI_PERIOD)
    dn = _wilder(np.where(np.isnan(d), np.nan, np.maximum(-d, 0)), RSI_PERIOD)
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["rsi"] = np.where(up + dn > 0, up / (up + dn), 0.5) * 2 - 1
    macd = (_ema(c, 12) - _ema(c, 26)) / c
    cols["macd"] = macd
    cols["macd_signal"] = macd - _ema(macd, 9)
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
    return np.stack([cols[n] for n in FEATURE_NAMES], axis=1)


def normalise(raw: np.ndarray) -> np.ndarray:
    """Causal rolling z-score per feature (its own last ``NORM_WINDOW`` rows), clipped.
    All features at once: prefix sums along time, so row t depends on rows <= t only."""
    out = raw.copy()
    cols = [j for j, name in enumerate(FEATURE_NAMES) if name not in _UNSCALED]
    x = raw[:, cols].astype(np.float64)
    w = NORM_WINDOW
    t = len(x)
    if t < w:
        out[:, cols] = np.nan
        return out
    valid = ~np.isnan(x)
    xf = np.where(valid, x, 0.0)
    zero = np.zeros((1, x.shape[1]))
    c0 = np.concatenate((zero, np.cumsum(valid, axis=0)))
    c1 = np.concatenate((zero, np.cumsum(xf, axis=0)))
    c2 = np.concatenate((zero, np.cumsum(xf * xf, axis=0)))
    n = np.full_like(x, np.nan)
    s1 = np.full_like(x, np.nan)
    s2 = np.full_like(x, np.nan)
    n[w - 1:], s1[w - 1:], s2[w - 1:] = c0[w:] - c0[:-w], c1[w:] - c1[:-w], c2[w:] - c2[:-w]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / n
        var = np.maximum(s2 / n - mean * mean, 0.0)
        z = (x - mean) / np.sqrt(var)
    z[~(n >= w // 2) | ~(var > 1e-18)] = np.nan
    out[:, cols] = np.clip(z, -CLIP, CLIP)
    return out


def compute_features(ohlcv: np.ndarray, ts_ms: np.ndarray, step_ms: int) -> np.ndarray:
    """Normalised causal features [T, F] as float32; NaN where not yet defined."""
    return normalise(raw_features(ohlcv, ts_ms, step_ms)).astype(np.float32)


WARMUP = NORM_WINDOW + max(RET_HORIZONS) + VOL_WINDOW  # rows before every feature is defined
