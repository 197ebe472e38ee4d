"""From candle series to training data: causal features per symbol, windows per walk-forward
part, and the aligned panel the cross-asset GNN needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bot.domain import CandleSeries, timeframe_ms
from models.features import FEATURE_NAMES, normalise, raw_features
from models.labels import Barriers, BarrierSpec, triple_barrier
from models.windows import Split, Windows, make_windows


@dataclass
class SymbolData:
    symbol: str
    ts: np.ndarray  # [T] open times
    close: np.ndarray  # [T]
    features: np.ndarray  # [T, F]
    next_ret: np.ndarray  # [T] log return of the following candle (NaN at the end)
    atr: np.ndarray  # [T] ATR in price units: what the risk manager places stops with
    barriers: Barriers  # the triple-barrier outcome of each row


ATR_COL = FEATURE_NAMES.index("atr_pct")


def symbol_data(series: CandleSeries, barrier: BarrierSpec) -> SymbolData:
    """Features and triple-barrier labels of one symbol."""
    c = series.candles
    ohlcv = np.array([[x.open, x.high, x.low, x.close, x.volume] for x in c], dtype=np.float64)
    ts = np.array([x.ts for x in c], dtype=np.int64)
    step = timeframe_ms(series.timeframe)
    raw = raw_features(ohlcv, ts, step)
    feats = normalise(raw).astype(np.float32)
    close = ohlcv[:, 3]
    atr = raw[:, ATR_COL] * close
    nxt = np.full(len(close), np.nan)
    nxt[:-1] = np.log(close[1:] / close[:-1])
    labels = triple_barrier(ohlcv[:, 1], ohlcv[:, 2], close, atr, barrier, ts, step)
    return SymbolData(series.symbol, ts, close, feats, nxt, atr, labels)


@dataclass
class Parts:
    train: Windows
    val: Windows
    test: Windows
    split_ts: dict[str, tuple[int, int]]  # part -> (first, last) open time, for the registry
    sizes: dict[str, list[int]]  # part -> windows per symbol, in the order of the data


def _concat(ws: Sequence[Windows]) -> Windows:
    # not adapter probing: the dataclass's own fields, by name
    return Windows(*(np.concatenate([getattr(w, f) for w in ws]) for f in
                     ("x", "ret", "up", "labeled", "t")))


def evenly(rows: np.ndarray, cap: int | None) -> np.ndarray:
    """At most ``cap`` of ``rows``, evenly spaced (all of them at or below the cap)."""
    if cap is None or len(rows) <= cap:
        return rows
    return rows[np.linspace(0, len(rows) - 1, max(1, cap)).astype(np.int64)]


def split_by_time(data: Sequence[SymbolData], split: Split, ref: np.ndarray, lookback: int,
                  horizon: int, max_train: int | None = None) -> Parts:
    """Windows of every symbol whose last candle falls in each part's time range; the parts
    are defined on the reference timeline ``ref`` so all symbols split at the same instants.
    With ``max_train``, the train part keeps at most that many windows in all, evenly spaced
    over each symbol's history, so an expanding training span costs (in time and memory) what
    the preset says, however long the file."""
    bounds = {name: (ref[a], ref[min(b, len(ref)) - 1]) for name, (a, b) in
              (("train", split.train), ("val", split.val), ("test", split.test))}
    out: dict[str, list[Windows]] = {k: [] for k in bounds}
    per_symbol = None if max_train is None else max(1, max_train // max(1, len(data)))
    for d in data:
        for name, (t0, t1) in bounds.items():
            rows = np.nonzero((d.ts >= t0) & (d.ts <= t1))[0]
            if name == "train":
                rows = evenly(rows, per_symbol)
            out[name].append(make_windows(d.features, d.close, lookback, horizon, rows=rows,
                                          barriers=d.barriers))
    train, val, test = (_concat(out[k]) for k in ("train", "val", "test"))
    return Parts(train, val, test,
                 split_ts={k: (int(v[0]), int(v[1])) for k, v in bounds.items()},
                 sizes={k: [len(w) for w in v] for k, v in out.items()})


def reference_timeline(data: Sequence[SymbolData]) -> np.ndarray:
    """The longest symbol's open times: the calendar the splits are cut on."""
    return max(data, key=lambda d: len(d.ts)).ts


def panel(data: Sequence[SymbolData], t0: int, t1: int, lookback: int, horizon: int,
          max_rows: int | None = None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Aligned windows [T, N, L, F], returns [T, N], target-first [T, N], has-a-direction
    [T, N] and open times [T] for the timestamps in [t0, t1] where every symbol has a
    complete window and an observed outcome (at most ``max_rows`` of them, evenly spaced)."""
    common = data[0].ts
    for d in data[1:]:
        common = np.intersect1d(common, d.ts)
    common = evenly(common[(common >= t0) & (common <= t1)], max_rows)
    built = []
    ok = np.ones(len(common), dtype=bool)
    for d in data:
        rows = np.searchsorted(d.ts, common)
        w = make_windows(d.features, d.close, lookback, horizon, rows=rows, barriers=d.barriers)
        ok &= np.isin(rows, w.t)
        built.append((w, rows))
    at = [np.searchsorted(w.t, rows[ok]) for w, rows in built]
    X = np.stack([w.x[i] for (w, _), i in zip(built, at, strict=False)], axis=1)
    R = np.stack([w.ret[i] for (w, _), i in zip(built, at, strict=False)], axis=1)
    U = np.stack([w.up[i] for (w, _), i in zip(built, at, strict=False)], axis=1)
    D = np.stack([w.labeled[i] for (w, _), i in zip(built, at, strict=False)], axis=1)
    return X, R, U, D, common[ok]


def window_times(data: Sequence[SymbolData], parts: Parts, part: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """For every window of ``part`` (in the parts' order): its open time, and the open time
    of the candle that decided its barrier outcome (-1 for a timeout). The online
    re-weighting learns an outcome on that candle, exactly as it would live."""
    w: Windows = getattr(parts, part)  # not probing: "train", "val" or "test" by name
    ts, resolved = [], []
    offset = 0
    for d, n in zip(data, parts.sizes[part], strict=False):
        rows = w.t[offset:offset + n]
        ts.append(d.ts[rows])
        exit_row = rows + d.barriers.exit_offset[rows]
        decided = d.barriers.decided[rows]
        resolved.append(np.where(decided, d.ts[np.minimum(exit_row, len(d.ts) - 1)], -1))
        offset += n
    if not ts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ts), np.concatenate(resolved)
