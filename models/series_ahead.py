"""One symbol's series in a backtest, computed ahead (``models/ensemble_batch.py``): its
features from the first candle the run hands over, which windows are scored, and every
member's outputs over them, chunk by chunk from the look-ahead processes (or from this one),
calibrated as the run reaches them; with one series, the combiner too
(``models/online_ahead.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bot.domain import Candle, CandleSeries
from bot.errors import StackbotError
from models.ahead_worker import AheadJob, AheadWorker
from models.ensemble import Calibrated, Ensemble
from models.ensemble_source import ATR_COL, Ready
from models.ensemble_spec import checked_spec
from models.features import WARMUP, normalise, raw_features
from models.labels import BarrierSpec
from models.online_ahead import OnlineAhead

# windows per forward on the CPU: small enough to stay in cache (512 measured fastest on 2
# cores with the per-row forward, bench/RESULTS.md)
CPU_CHUNK = 512


class SeriesAhead:
    """One symbol's series from the first candle the source saw, with (once computed) every
    scoreable window's member outputs. They come chunk by chunk (from the look-ahead
    processes, or from this one) and are calibrated as the run reaches them, once both they and
    the cross-sectional members' columns are in."""

    def __init__(self, candles: Sequence[Candle], first: int) -> None:
        self.candles = candles
        self.first = first
        self.pos = first - 1  # the last candle handed to the source
        self.row: np.ndarray | None = None  # per candle from ``first``: its window, or -1
        self.ts = np.empty(0, dtype=np.int64)
        self.feats = np.empty((0, 0), dtype=np.float32)
        self.lookback = 0
        self.job = AheadJob(0, 0, ())
        self.atr = np.empty(0)
        self.high = self.low = self.close = np.empty(0)
        self.cal: Calibrated | None = None  # the outputs calibrated, rows < ``calibrated``
        self.direct: OnlineAhead | None = None  # the combiner ahead (``_direct``)
        self.calibrated = 0
        self.crossed = 0  # rows whose cross-sectional columns are in (all: no such member)

    @property
    def outs(self) -> np.ndarray:
        return self.job.outs

    @property
    def regime(self) -> np.ndarray:
        return self.job.regime

    def follows(self, c: Candle) -> bool:
        nxt = self.pos + 1
        return nxt < len(self.candles) and (self.candles[nxt] is c or self.candles[nxt] == c)

    def compute(self, ens: Ensemble, step_ms: int, need: int, chunk: int,
                worker: AheadWorker | None, alone: bool = False) -> None:
        """Features of the series, its windows, and their outputs on their way. ``alone``:
        the only series of the run, so each window is a cross-section of its own and the
        cross-sectional members' columns come with the others'."""
        idx = self.prepare(step_ms, ens.lookback, need)
        cross = [] if alone else ens.cross
        self._expect(len(ens.names), [i for i in range(len(ens.names)) if i not in cross])
        # until the look-ahead processes are ready (they start with the run and import torch
        # meanwhile), here; from then on there, beside the engine, chunk by chunk; all here
        # where they failed to start
        for lo in range(0, len(idx), chunk):
            if worker is not None and worker.is_ready():
                worker.submit(self.job, self.feats, idx[lo:], chunk, base=lo, alone=alone)
                return
            self.job.deliver(lo, *ens.raw_ends(self.feats, idx[lo : lo + chunk], alone))

    def prepare(self, step_ms: int, lookback: int, need: int) -> np.ndarray:
        """The features of the series from ``first`` on, and which windows are scored: the
        rows they end at (returned), and each candle's row (``row``, -1: none)."""
        cs = self.candles[self.first :]
        ohlcv = np.array([(c.open, c.high, c.low, c.close, c.volume) for c in cs])
        ts = np.array([c.ts for c in cs], dtype=np.int64)
        raw = raw_features(ohlcv, ts, step_ms)
        feats = normalise(raw).astype(np.float32)
        n = len(cs)
        self.ts, self.feats, self.lookback = ts, feats, lookback
        self.high, self.low, self.close = ohlcv[:, 1], ohlcv[:, 2], ohlcv[:, 3]
        # a window ending at row i is scored when i + 1 >= need and none of its rows is NaN
        nan_rows = np.concatenate(([0], np.cumsum(np.isnan(feats).any(axis=1))))
        ok = np.zeros(n, dtype=bool)
        if n >= need:
            end = np.arange(need - 1, n)
            ok[need - 1 :] = nan_rows[end + 1] - nan_rows[end + 1 - lookback] == 0
        idx = np.flatnonzero(ok)
        self.row = np.full(n, -1)
        self.row[idx] = np.arange(len(idx))
        self.atr = raw[:, ATR_COL] * ohlcv[:, 3]
        return idx

    def _expect(self, m: int, keep: Sequence[int]) -> None:
        """The job the outputs of the ``m`` members fill (those of ``keep`` come from it)."""
        rows = int((self.row >= 0).sum()) if self.row is not None else 0
        self.job = AheadJob(rows, m, keep)
        self.cal = Calibrated(np.empty((rows, m)), np.empty((rows, m)), np.empty(rows),
                              np.empty(rows), np.empty((rows, m)))
        self.calibrated = 0
        self.crossed = rows if len(keep) == m else 0

    def crossed_in(self, ens: Ensemble, rows: np.ndarray) -> None:
        """The cross-sectional columns of ``rows`` are in: rows calibrated before (a
        cross-section computed again) are calibrated again."""
        self.crossed = max(self.crossed, int(rows.max()) + 1)
        old = rows[rows < self.calibrated]
        if len(old):
            self._calibrate(ens, old)

    def _calibrate(self, ens: Ensemble, rows: np.ndarray | slice) -> None:
        assert self.cal is not None
        fresh = ens.calibrated(self.outs[rows])
        for mine, new in zip(self.cal.parts(), fresh.parts(), strict=True):
            mine[rows] = new

    def next_row(self) -> int:
        """The window of the next candle of the series (-1: none)."""
        assert self.row is not None
        i = self.pos + 1 - self.first
        return int(self.row[i]) if i < len(self.row) else -1

    def arrived(self, r: int) -> bool:
        return r < self.job.done

    def calibrate_to(self, ens: Ensemble, r: int) -> bool:
        """Calibrate the rows that are in, waiting for ``r``; False where ``r``'s
        cross-sectional columns are not in yet (the warm-up replay computes them after)."""
        if r < self.calibrated:
            return True
        self.job.wait(r)
        hi = min(self.job.done, self.crossed)
        if hi > self.calibrated:
            self._calibrate(ens, slice(self.calibrated, hi))
            self.calibrated = hi
        return r < hi

    def window(self, i: int) -> np.ndarray:
        return self.feats[i - self.lookback + 1 : i + 1]

    def windows(self, ends: np.ndarray) -> np.ndarray:
        """The windows ending at the candles ``ends`` [T]: [T, L, F]."""
        return self.feats[ends[:, None] + np.arange(1 - self.lookback, 1)]

    def ready(self, c: Candle, ens: Ensemble) -> Ready | None:
        assert self.row is not None
        i = self.pos - self.first
        r = int(self.row[i])
        if r < 0:
            return None
        cal = (self.cal.rows(slice(r, r + 1))
               if self.calibrate_to(ens, r) and self.cal is not None else None)
        return Ready(c, float(self.atr[i]), outs=self.outs[r], regime=int(self.regime[r]),
                     cal=cal)

    def todo(self, ready: Ready) -> Ready:
        """The same candle, to score with a forward (its window from these features)."""
        return Ready(ready.candle, ready.atr, x=self.window(self.pos - self.first))


def look_ahead_early(worker: AheadWorker, series: CandleSeries, first: int, step_ms: int,
                     lookback: int, members: int) -> SeriesAhead:
    """The one series' look-ahead, from its candle ``first`` (where the run will start it),
    handed to the look-ahead processes before they are ready: they take it up the moment
    they have loaded the ensemble, instead of once the engine has started and seen its first
    candle. Each window is its own cross-section, as for a source with that one series."""
    ahead = SeriesAhead(series.candles, first)
    idx = ahead.prepare(step_ms, lookback, WARMUP + lookback)
    ahead._expect(members, range(members))
    if len(idx):
        worker.submit(ahead.job, ahead.feats, idx, CPU_CHUNK, alone=True)
    return ahead


def early_look_ahead(worker: AheadWorker, manifest: Path, sha256: str | None,
                     barrier: BarrierSpec, series: Sequence[CandleSeries],
                     firsts: Mapping[str, int | None] | None, step_ms: int) -> SeriesAhead | None:
    """(blocking) A backtest of one series: the processes told to load the ensemble, then
    handed its look-ahead from the manifest alone (``look_ahead_early``). None where there is
    more than one series or anything about it is wrong: the run then finds out as before,
    once they have loaded it."""
    first = firsts.get(series[0].symbol) if firsts and len(series) == 1 else None
    if first is None:
        return None
    try:
        spec = checked_spec(manifest, sha256, barrier)
        worker.load(manifest, sha256, barrier.to_dict())  # first: they load, then take it up
        return look_ahead_early(worker, series[0], first, step_ms, int(spec["lookback"]),
                                len(spec["members"]))
    except (StackbotError, OSError, ValueError, KeyError, TypeError):
        return None
