"""A backtest of one series computes the combiner ahead too (models/online_ahead.py): every
prediction's outcome, the online multipliers and the stacked p in vectorised passes. It must
give the candle-by-candle source's signals, and, where the run leaves that path, hand over
the candle-by-candle source's own state (its online weights and waiting predictions)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np

from bot.domain import Candle, CandleSeries, Signal
from models.ensemble import Ensemble
from models.ensemble_batch import BatchedEnsembleSignalSource
from models.ensemble_source import EnsembleSignalSource
from models.online_ahead import NEVER, resolutions
from tests.helpers import candles
from tests.test_ensemble_batch import BAR, H, _assert_same, _ensemble, _series


def _learn_reference(c: list[Candle], made: list[int], upper: np.ndarray, lower: np.ndarray,
                     horizon_ms: int) -> tuple[list[int], list[int]]:
    """``EnsembleSignalSource._learn``'s rule, candle by candle, for each prediction."""
    ks, ys = [], []
    for i, m in enumerate(made):
        k, y = len(c), NEVER
        for j in range(m + 1, len(c)):
            if c[j].low <= lower[i]:
                k, y = j, 0
                break
            if c[j].high >= upper[i]:
                k, y = j, 1
                break
            if not c[j].ts < c[m].ts + horizon_ms:
                k = j
                break
        ks.append(k)
        ys.append(y)
    return ks, ys


def test_resolutions_follow_the_candle_by_candle_rule() -> None:
    """Stops, targets, timeouts (across a gap too) and predictions still waiting at the end,
    each as the candle-by-candle rule decides them."""
    cs = candles("AAA/USDT", 1500, "1h", seed=41)
    cs = cs[:600] + cs[640:]  # a 40-hour gap: the horizon passes on the first candle after
    ts = np.array([c.ts for c in cs])
    high = np.array([c.high for c in cs])
    low = np.array([c.low for c in cs])
    close = np.array([c.close for c in cs])
    rng = np.random.default_rng(3)
    made = np.union1d(rng.choice(len(cs), 900, replace=False), np.arange(595, 600))
    atr = rng.uniform(0.2, 3.0, len(made)) * np.abs(np.diff(close)).mean()
    atr[np.isin(made, np.arange(595, 600))] *= 100  # barriers too far: only time ends them
    upper, lower = BAR.levels(close[made], atr)
    k, y = resolutions(ts, high, low, made, upper, lower, BAR.horizon * H)
    want_k, want_y = _learn_reference(cs, made.tolist(), upper, lower, BAR.horizon * H)
    assert k.tolist() == want_k and y.tolist() == want_y
    timeouts = (y == NEVER) & (k < len(cs))
    # not vacuous: every kind of ending is there, the gap's timeouts among them
    assert (y == 0).sum() > 50 and (y == 1).sum() > 50 and timeouts.sum() > 20
    assert (k == len(cs)).sum() >= 1
    # the gap: fewer than ``horizon`` candles later, the first one after it is past the
    # horizon's end, so the five predictions just before it time out there
    gap = np.isin(made, np.arange(595, 600))
    assert (k[gap] == 600).all() and (y[gap] == NEVER).all()


async def _feed(src: EnsembleSignalSource, steps: list[Candle]) -> dict[int, Signal]:
    out = {}
    for c in steps:
        for s in await src.on_candles([c]):
            out[s.ts] = s
    return out


def _assert_close(a: dict[int, Signal], b: dict[int, Signal], tol: float) -> None:
    assert a.keys() == b.keys() and len(a) > 300
    for ts, x in a.items():
        y = b[ts]
        assert abs(x.p_up - y.p_up) < tol, ts
        assert (x.expected_return, x.dispersion, x.regime, x.atr, x.members) == \
               (y.expected_return, y.dispersion, y.regime, y.atr, y.members), ts


def _state(src: EnsembleSignalSource, symbol: str) -> tuple[np.ndarray, list]:
    online = src._online
    return online._losses[online._start:online._end].copy(), list(src._pending.get(symbol, []))


def _candle_by_candle(ens: Ensemble, series: list[CandleSeries],
                     chunk: int | None = None) -> BatchedEnsembleSignalSource:
    """The batched source with the combiner candle by candle (as for several series): the
    same member outputs, so only the combiner can differ."""
    src = BatchedEnsembleSignalSource(ens, "1h", series, chunk=chunk)
    src._direct = False
    return src


def test_one_series_gives_the_candle_by_candle_signals_and_hands_over_its_state() -> None:
    """Computed ahead to candle 700 (in chunks of 64, so the p come in blocks), then left:
    the online weights and the waiting predictions are the candle-by-candle source's at that
    candle, and every signal before and after is its signal."""
    cs = candles("AAA/USDT", 1300, "1h", seed=42)
    ens = _ensemble()
    series = [_series("AAA/USDT", cs)]
    stepwise = _candle_by_candle(ens, series, chunk=64)
    batched = BatchedEnsembleSignalSource(ens, "1h", series, chunk=64)
    want = asyncio.run(_feed(stepwise, cs[:700]))
    got = asyncio.run(_feed(batched, cs[:700]))
    assert batched._direct is True
    # the path learns nothing candle by candle: the source's own state is untouched ...
    assert batched._online.count == 0 and not any(batched._pending.values())
    _assert_close(want, got, 1e-12)
    batched._leave()
    assert batched._direct is False
    # ... until it leaves, with the state the candle-by-candle source has
    losses, pending = _state(batched, "AAA/USDT")
    want_losses, want_pending = _state(stepwise, "AAA/USDT")
    assert len(want_losses) == 200 and len(want_pending) >= 3  # a full window, some waiting
    np.testing.assert_allclose(losses, want_losses, rtol=1e-15, atol=0)
    assert [p[:3] for p in pending] == [p[:3] for p in want_pending]
    assert all(np.array_equal(p[3], q[3]) for p, q in zip(pending, want_pending, strict=True))
    assert np.array_equal(batched._hist["AAA/USDT"].window()[0],
                          stepwise._hist["AAA/USDT"].window()[0])
    _assert_close(asyncio.run(_feed(stepwise, cs[700:])), asyncio.run(_feed(batched, cs[700:])),
                  1e-12)


def test_a_candle_off_the_one_series_leaves_the_path_for_good() -> None:
    """The feed hands over a candle the series does not have: from there the source goes on
    candle by candle, from the state the path handed over, and agrees with the stepwise one."""
    cs = candles("AAA/USDT", 1100, "1h", seed=43)
    fed = cs[:650] + [replace(cs[650], close=cs[650].close * 1.01,
                              high=max(cs[650].high, cs[650].close * 1.01))] + cs[651:]
    ens = _ensemble()
    want = asyncio.run(_feed(_candle_by_candle(ens, [_series("AAA/USDT", cs)]), fed))
    batched = BatchedEnsembleSignalSource(ens, "1h", [_series("AAA/USDT", cs)])
    got = asyncio.run(_feed(batched, fed))
    # and the candle-by-candle path is the stepwise source's (tests/test_ensemble_batch.py)
    _assert_same({("AAA/USDT", t): x for t, x in got.items()},
                 {("AAA/USDT", t): x
                  for t, x in asyncio.run(_feed(EnsembleSignalSource(ens, "1h"), fed)).items()})
    assert batched._direct is False and batched._ahead["AAA/USDT"] is None
    assert batched._online.count == 200  # learning went on after the hand-over
    _assert_close(want, got, 1e-12)
