"""A backtest of one series hands its look-ahead to the processes before they are ready
(models/series_ahead.py ``look_ahead_early``): they take it up the moment they have loaded the
ensemble, instead of once the engine has started. The run must adopt it only where it starts
where it was computed from, give the signals it would give without it to the last bit, and
compute nothing twice; a look-ahead it does not adopt is not computed to its end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bot.domain import Candle, CandleSeries, Signal, Warmup
from bot.feeds.replay import ReplayFeed
from models.ahead_worker import DEPTH, AheadJob, AheadWorker
from models.ensemble import Ensemble
from models.ensemble_batch import BatchedEnsembleSignalSource
from models.series_ahead import look_ahead_early
from tests.helpers import candles
from tests.test_ahead_worker import BAR, _ready, _rows, _saved, _signals
from tests.test_ensemble_batch import H, _series, _timestamps


def _same(want: dict[tuple[str, int], Signal], got: dict[tuple[str, int], Signal]) -> None:
    assert len(want) > 1000 and want.keys() == got.keys()
    for k, x in want.items():
        y = got[k]
        assert (x.p_up, x.expected_return, x.dispersion, x.regime, x.members) == \
               (y.p_up, y.expected_return, y.dispersion, y.regime, y.members), k


def _case(tmp_path: Path, seed: int) -> tuple[Path, str, Ensemble, list[CandleSeries],
                                              list[list[Candle]],
                                              dict[tuple[str, int], Signal]]:
    """A saved ensemble, one series, its steps, and the signals of a source that computes
    everything in this process."""
    manifest, digest, ens = _saved(tmp_path)
    series = [_series("AAA/USDT", candles("AAA/USDT", 1400, "1h", seed=seed))]
    steps = _timestamps(series)
    want = asyncio.run(_signals(BatchedEnsembleSignalSource(ens, "1h", series, threads=1),
                                steps))
    return manifest, digest, ens, series, steps, want


@pytest.mark.parametrize("first", [0, 100])
def test_a_look_ahead_handed_over_early_is_the_runs_where_it_starts_there(
        tmp_path: Path, first: int) -> None:
    """From the series' first candle (where the run starts): adopted, every window computed
    there once. From another candle: not adopted; the run computes its own, and the same
    signals come out either way."""
    manifest, digest, ens, series, steps, want = _case(tmp_path, 71)
    worker = AheadWorker(2)
    try:
        worker.load(manifest, digest, BAR.to_dict())
        assert not worker.is_ready()  # handed over while they still import torch
        early = look_ahead_early(worker, series[0], first, H, ens.lookback, len(ens.names))
        described = worker.ensemble(manifest, digest, BAR)
        assert described is not None
        src = BatchedEnsembleSignalSource(described, "1h", series, worker=worker, early=early)
        got = asyncio.run(_signals(src, steps))
        adopted = src._ahead["AAA/USDT"] is early
        windows = len(src._ahead["AAA/USDT"].job.regime)  # type: ignore[union-attr]
        received = worker.rows_received
    finally:
        worker.close()
    _same(want, got)
    assert adopted is (first == 0)
    if adopted:  # every window from the processes, and each once
        assert received == windows > 1000
    else:  # the run's own look-ahead, and the other one's chunks dealt before it was dropped
        assert received >= windows > 1000


@pytest.mark.parametrize("load", ["never", "refused"])
def test_processes_that_never_load_leave_the_run_to_compute_here(tmp_path: Path,
                                                                 load: str) -> None:
    """Handed over to processes that never load the ensemble, or refuse its files: the run
    (its ensemble loaded here, as the app does then) does not wait for them; it computes
    here and gives the same signals."""
    manifest, digest, ens, series, steps, want = _case(tmp_path, 73)
    worker = AheadWorker(2)
    try:
        if load == "refused":
            worker.load(manifest, "0" * 64, BAR.to_dict())
        early = look_ahead_early(worker, series[0], 0, H, ens.lookback, len(ens.names))
        if load == "refused":
            assert worker.ensemble(manifest, "0" * 64, BAR, timeout=120) is None
        src = BatchedEnsembleSignalSource(ens, "1h", series, threads=1, worker=worker,
                                          early=early)
        got = asyncio.run(_signals(src, steps))
        adopted = src._ahead["AAA/USDT"] is early
        received = worker.rows_received
    finally:
        worker.close()
    assert not adopted and received == 0
    _same(want, got)


def test_a_dropped_look_ahead_deals_no_more_chunks(tmp_path: Path) -> None:
    """Dropped before the processes are ready: only the chunks dealt already come back, and
    the processes go on with the next job."""
    manifest, digest, _ = _saved(tmp_path)
    feats, ends = _rows()
    worker = AheadWorker(2)
    try:
        worker.load(manifest, digest, BAR.to_dict())
        dropped = AheadJob(len(ends), 5, range(5))
        worker.submit(dropped, feats, ends, 16)  # 90 chunks of 16
        worker.cancel(dropped)
        _ready(worker)
        job = AheadJob(len(ends), 5, range(5))
        worker.submit(job, feats, ends, 128)
        job.wait(len(ends) - 1)
        time.sleep(0.2)  # any chunk of the dropped job still on its way
        received = worker.rows_received
    finally:
        worker.close()
    assert 0 < received - len(ends) <= 2 * DEPTH * 16  # the dealt chunks, no more
    assert dropped.done < len(ends)


def test_the_feed_says_where_each_series_starts() -> None:
    """``ReplayFeed.first_index``: the first candle the feed hands over for a series (its
    warm-up's first, where a start leaves history before it), as its events say."""
    cs = candles("AAA/USDT", 3000, "1h", seed=72)
    s = CandleSeries(Path("AAA_USDT.csv"), "AAA/USDT", "1h", cs, [], False)
    cases = [(None, None), (cs[100].ts, None), (cs[2000].ts, None),
             (cs[2000].ts + 1, cs[2500].ts), (None, cs[0].ts), (cs[-1].ts + 1, None)]
    for start, end in cases:
        feed = ReplayFeed([s], start, end)
        first = None
        for event in feed.events():
            c: Candle | None = (event.candles[0] if isinstance(event, Warmup)
                                else event[0] if isinstance(event, tuple) else None)
            if c is not None:
                first = cs.index(c)
                break
        assert feed.first_index(s) == first, (start, end)
    assert ReplayFeed([s], cs[2000].ts).first_index(s) == 800  # 1,200 candles of warm-up
