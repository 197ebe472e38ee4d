"""Promotion compares like with like: the active ensemble and the candidate each score the
candidate's held-out test candles exactly as they would live.

Both run through ``EnsembleSignalSource``, the engine's signal source. They are warmed with
the history a live start gets, then fed one timestamp at a time with every symbol's candle
of that timestamp. So the GNN sees a real cross-section, never a graph across unrelated
times, and the online re-weighting runs for both, as it would in trading. Both are scored by
log-loss on the same windows: those where both gave a p and the triple-barrier outcome was a
touch of the target or the stop (timeouts are excluded, as in training).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bot.domain import Candle, CandleSeries
from models.calibrate import report
from models.dataset import symbol_data
from models.ensemble import Ensemble
from models.ensemble_source import LIVE_WARMUP, EnsembleSignalSource


@dataclass(frozen=True)
class Comparison:
    new_log_loss: float
    old_log_loss: float
    n: int  # windows scored by both, with a decided outcome

    @property
    def new_is_better(self) -> bool:
        return self.n > 0 and self.new_log_loss < self.old_log_loss


async def live_predictions(ens: Ensemble, series: Sequence[CandleSeries], timeframe: str,
                           t0: int, t1: int) -> dict[tuple[str, int], float]:
    """The p the ensemble gives each (symbol, open time) in [t0, t1] when it trades live from
    t0: warmed with the ``LIVE_WARMUP`` timestamps before t0, then a timestamp at a time."""
    stamps: dict[int, list[Candle]] = {}
    for s in series:
        for c in s.candles:
            stamps.setdefault(c.ts, []).append(c)
    order = sorted(stamps)
    before = [ts for ts in order if ts < t0][-LIVE_WARMUP:]
    src = EnsembleSignalSource(ens, timeframe)
    src.warm([c for ts in before for c in stamps[ts]])
    out: dict[tuple[str, int], float] = {}
    for ts in (t for t in order if t0 <= t <= t1):
        for sig in await src.on_candles(stamps[ts]):
            out[(sig.symbol, sig.ts)] = sig.p_up
    return out  # (the source scores on the process's torch thread, which stays)


async def compare_live(new: Ensemble, old: Ensemble, series: Sequence[CandleSeries],
                       timeframe: str, t0: int, t1: int) -> Comparison:
    """Log-loss of both ensembles on the same live-scored windows of [t0, t1]."""
    p_new = await live_predictions(new, series, timeframe, t0, t1)
    p_old = await live_predictions(old, series, timeframe, t0, t1)
    outcome: dict[tuple[str, int], float] = {}
    for s in series:
        d = symbol_data(s, new.barrier)
        for row in np.nonzero(d.barriers.decided & d.barriers.valid)[0]:
            outcome[(s.symbol, int(d.ts[row]))] = float(d.barriers.up[row])
    keys = sorted(k for k in p_new if k in p_old and k in outcome)
    if not keys:
        return Comparison(float("nan"), float("nan"), 0)
    y = np.array([outcome[k] for k in keys])
    new_ll = report(np.array([p_new[k] for k in keys]), y)["log_loss"]
    old_ll = report(np.array([p_old[k] for k in keys]), y)["log_loss"]
    return Comparison(float(new_ll), float(old_ll), len(keys))
