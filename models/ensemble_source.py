"""The engine's signal source for the model ensemble (``models/ensemble.py``). It keeps a
rolling candle buffer per symbol, computes the same causal features as training, scores them
with the ensemble and hands the engine its signals. The online weights learn each outcome on
the candle that touches the target or the stop, as the training labels do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from bot.domain import Candle, Gap, PromotedModel, Signal, timeframe_ms
from models.device import set_threads, torch_thread
from models.ensemble import Calibrated, Ensemble, Prediction
from models.features import (
    FEATURE_NAMES,
    NORM_WINDOW,
    WARMUP,
    history_rows,
    normalise,
    raw_features,
)
from models.meta import OnlineWeights
from models.registry import RegistryError

ATR_COL = FEATURE_NAMES.index("atr_pct")
# timestamps of warm-up history run through the model at start: enough for the online
# weights' 200 most recent outcomes and the predictions still awaiting theirs (one symbol
# decides about 0.7 outcomes a candle, each within the barrier horizon)
REBUILD_CANDLES = 400
# candles of history per symbol a live start hands the ensemble before its first live candle:
# a full window (``history_rows(lookback)``, 632 at lookback 32) plus the REBUILD_CANDLES it
# replays; ``EnsembleSignalSource`` refuses a lookback it does not cover
LIVE_WARMUP = 1200



class History:
    """The last ``keep`` candles of one symbol as arrays, in time order (appending is O(1)
    amortised: the arrays are twice as long and moved back when full)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.ohlcv = np.empty((2 * keep, 5))
        self.ts = np.empty(2 * keep, dtype=np.int64)
        self.end = 0

    def __len__(self) -> int:
        return min(self.end, self.keep)

    def append(self, c: Candle) -> None:
        if self.end == len(self.ts):
            k = self.keep - 1
            self.ohlcv[:k] = self.ohlcv[self.end - k : self.end]
            self.ts[:k] = self.ts[self.end - k : self.end]
            self.end = k
        self.ohlcv[self.end] = (c.open, c.high, c.low, c.close, c.volume)
        self.ts[self.end] = c.ts
        self.end += 1

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        lo = max(0, self.end - self.keep)
        return self.ohlcv[lo : self.end], self.ts[lo : self.end]


@dataclass
class Ready:
    """A candle ready to score: its features [L, F] (None: its member outputs are known
    already, in ``outs`` and ``regime``) and its ATR in price units."""

    candle: Candle
    atr: float
    x: np.ndarray | None = None
    outs: np.ndarray | None = None
    regime: int = -1
    cal: Calibrated | None = None  # the outputs calibrated already (one row)


class EnsembleSignalSource:
    """The engine's ``SignalSource`` for the model ensemble.

    Each symbol keeps its last ``history_rows(lookback)`` candles: enough that the features of
    a window equal those of the whole history, which training used, to ~1e-9
    (``models.features.SETTLE``). The symbols of one timestamp go through the features in one
    batched pass and through the members in one forward."""

    name = "ensemble"

    def __init__(
        self, ensemble: Ensemble, timeframe: str, executor: Executor | None = None, threads: int = 1
    ) -> None:
        self.ens = ensemble
        self.model_version = ensemble.id
        self.timeframe = timeframe
        self.step = timeframe_ms(timeframe)
        self.executor = executor or torch_thread()  # the process's one torch thread
        # one intra-op thread: small batches run faster without OpenMP contention with the
        # event loop's thread (raise it for many symbols). Set where the scoring runs: the
        # count is each OS thread's own (models/device.py)
        set_threads(self.executor, threads)
        self.keep = history_rows(ensemble.lookback)
        self.need = WARMUP + ensemble.lookback  # candles before the first window is scored
        if self.keep + REBUILD_CANDLES > LIVE_WARMUP:
            raise RegistryError(
                f"ensemble {ensemble.id}: lookback {ensemble.lookback} needs "
                f"{self.keep + REBUILD_CANDLES} candles of warm-up; a start hands over "
                f"{LIVE_WARMUP} (models/ensemble_source.py LIVE_WARMUP)")
        self._hist: dict[str, History] = {}
        self._online = OnlineWeights(len(ensemble.names))
        # per symbol: (open time, upper barrier, lower barrier, member p) awaiting an outcome
        self._pending: dict[str, list[tuple[int, float, float, np.ndarray]]] = {}
        self._replay: list[list[Candle]] = []  # warm-up timestamps to run through the model

    def on_gap(self, gap: Gap) -> None:
        return None  # the features mark the gap and do not reach across it

    def _append(self, c: Candle) -> None:
        h = self._hist.get(c.symbol)
        if h is None:
            h = self._hist[c.symbol] = History(self.keep)
        h.append(c)

    def _windows(self, candles: Sequence[Candle]) -> dict[str, Ready]:
        """Features of every listed symbol whose history is long enough, in one pass per
        history length (after the first ``keep`` candles, one pass)."""
        lookback = self.ens.lookback
        rows = lookback + NORM_WINDOW - 1  # raw rows the last ``lookback`` z-scores read
        by_len: dict[int, list[Candle]] = {}
        for c in candles:
            n = len(self._hist[c.symbol])
            if n >= self.need:
                by_len.setdefault(n, []).append(c)
        out: dict[str, Ready] = {}
        for group in by_len.values():
            wins = [self._hist[c.symbol].window() for c in group]
            ohlcv = np.stack([w[0] for w in wins])
            raw = raw_features(ohlcv, np.stack([w[1] for w in wins]), self.step, tail=rows)
            feats = normalise(raw, last=lookback).astype(np.float32)
            nan_rows = np.isnan(feats).reshape(len(group), -1).sum(axis=1)
            for i, c in enumerate(group):
                if nan_rows[i] == 0:
                    out[c.symbol] = Ready(c, float(raw[i, -1, ATR_COL] * ohlcv[i, -1, 3]),
                                          feats[i])
        return out

    def _learn(self, c: Candle) -> None:
        """Outcomes this candle decides re-weight the members (online, by log-loss): a touch
        of the stop (first, when both are inside the candle) or of the target. A prediction
        whose horizon passes untouched is a timeout and teaches nothing, as in training."""
        waiting = self._pending.get(c.symbol)
        if not waiting:
            return
        keep = []
        for ts, upper, lower, member_p in waiting:
            if c.ts <= ts:
                keep.append((ts, upper, lower, member_p))
            elif c.low <= lower:
                self._online.update(member_p, 0.0)
            elif c.high >= upper:
                self._online.update(member_p, 1.0)
            elif c.ts < ts + self.ens.horizon * self.step:
                keep.append((ts, upper, lower, member_p))
        self._pending[c.symbol] = keep

    def swap(self, model: PromotedModel) -> bool:
        """Score from now on with a newly promoted version (same features, new weights)."""
        if not isinstance(model, Ensemble):
            raise TypeError(f"an ensemble source cannot score with {type(model).__name__}")
        ensemble = model
        self.ens = ensemble
        self.model_version = ensemble.id
        self._online = OnlineWeights(len(ensemble.names))
        self._pending.clear()
        self._replay.clear()
        return True

    @property
    def device(self) -> str:
        return self.ens.device

    def warm(self, candles: Sequence[Candle]) -> None:
        """History before trading starts. The older part only fills the feature buffers; the
        last ``REBUILD_CANDLES`` timestamps are kept to run through the model before the first
        live candle (in the executor, as live would, without signals), so the online weights
        and the predictions awaiting their barrier are those of a run that never stopped: a
        restart does not change the next p."""
        groups: dict[int, list[Candle]] = {}
        for c in candles:
            groups.setdefault(c.ts, []).append(c)
        stamps = sorted(groups)
        cut = max(0, len(stamps) - REBUILD_CANDLES)
        for ts in stamps[:cut]:
            for c in groups[ts]:
                self._append(c)
        self._replay.extend(groups[ts] for ts in stamps[cut:])

    def _take(self, candles: Sequence[Candle]) -> list[Ready]:
        """Buffer each candle, learn what it decides, and return those ready to score."""
        for c in candles:
            self._append(c)
            self._learn(c)
        ready = self._windows(candles)
        return [ready[c.symbol] for c in candles if c.symbol in ready]

    def _score(self, ready: Sequence[Ready], online: np.ndarray) -> list[Prediction]:
        """The members' outputs (one forward for those not known yet), then the combiner."""
        cals = [r.cal for r in ready if r.cal is not None]
        if len(cals) == len(ready):  # computed and calibrated ahead (backtests)
            cal = cals[0] if len(cals) == 1 else Calibrated(
                *(np.concatenate(parts) for parts in zip(*(c.parts() for c in cals),
                                                         strict=True)))
            return self.ens.combined(cal, np.array([r.regime for r in ready]), online)
        todo = [r for r in ready if r.outs is None]
        if todo:
            assert all(r.x is not None for r in todo)
            outs, regime = self.ens.raw(np.stack([r.x for r in todo]))  # type: ignore[misc]
            for i, r in enumerate(todo):
                r.outs, r.regime = outs[i], int(regime[i])
        return self.ens.finish(np.stack([r.outs for r in ready]),  # type: ignore[misc]
                               np.array([r.regime for r in ready]), online)

    def _remember(self, ready: Sequence[Ready], preds: Sequence[Prediction]) -> None:
        for r, p in zip(ready, preds, strict=False):
            if r.atr > 0:
                c = r.candle
                upper, lower = self.ens.barrier.levels(c.close, r.atr)
                self._pending.setdefault(c.symbol, []).append((c.ts, upper, lower, p.member_p))

    def _rebuild(self) -> None:
        """Run the kept history through the model, one timestamp at a time (executor)."""
        while self._replay:
            ready = self._take(self._replay.pop(0))
            if ready:
                self._remember(ready, self._score(ready, self._online.multipliers()))

    async def on_candles(self, candles: Sequence[Candle]) -> list[Signal]:
        loop = asyncio.get_running_loop()
        if self._replay:
            await loop.run_in_executor(self.executor, self._rebuild)
        ready = self._take(candles)
        if not ready:
            return []
        online = self._online.multipliers()
        if all(r.outs is not None for r in ready):  # known already: no forward to wait for
            preds = self._score(ready, online)
        else:
            preds = await loop.run_in_executor(self.executor, self._score, ready, online)
        self._remember(ready, preds)
        names = self.ens.names
        return [
            Signal(
                symbol=r.candle.symbol,
                ts=r.candle.ts,
                p_up=p.p_up,
                expected_return=p.expected_return,
                source=self.name,
                model_version=self.model_version,
                dispersion=p.dispersion,
                regime=p.regime,
                price=r.candle.close,
                atr=r.atr,
                members=tuple(zip(names, p.shown.tolist(), strict=True)),
            )
            for r, p in zip(ready, preds, strict=False)
        ]
