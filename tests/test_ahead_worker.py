"""A CPU backtest computes the members' forward in a process of its own, beside the engine
(models/ahead_worker.py). It must compute exactly what this process would, hand its rows
over in order, never leave a run waiting on a dead process, and see no secret."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.domain import Signal
from bot.errors import ModelError
from models.ahead_worker import AheadJob, AheadWorker
from models.ensemble import Ensemble
from models.ensemble_batch import BatchedEnsembleSignalSource
from models.features import FEATURE_NAMES, feature_spec_hash, normalise, raw_features
from models.labels import BarrierSpec
from models.members import REGISTRY, MemberConfig
from models.meta import LogitMoments
from models.registry import save_member, sha256
from tests.helpers import candles
from tests.test_ensemble_batch import _series, _timestamps

BAR = BarrierSpec(1.0, 1.5, 12)
NAMES = ("gru", "tcn", "vae", "gnn", "transformer")  # the GNN's columns stay the parent's
L = 8


def _saved(root: Path) -> tuple[Path, str, Ensemble]:
    """An ensemble written as the registry writes one, and the same loaded here."""
    torch.manual_seed(5)
    members = [REGISTRY[n](MemberConfig(len(FEATURE_NAMES), L, 8)).eval() for n in NAMES]
    temps = [1.0, 0.8, 1.0, 0.9, 1.1]
    entries = []
    for m, t in zip(members, temps, strict=True):
        digest = save_member(m, root / f"{m.name}.pt", t, BAR)
        entries.append({"id": m.name, "name": m.name, "path": f"{m.name}.pt",
                        "sha256": digest, "temperature": t})
    manifest = root / "ensemble.json"
    manifest.write_text(json.dumps({
        "ensemble_id": "ens-test", "members": entries,
        "meta_weights": [0.5, 0.3, 0.2, 0.4, 0.3], "meta_bias": -0.3,
        "logit_moments": LogitMoments(np.zeros(5), np.eye(5) * 0.01).to_dict(),
        "lookback": L, "horizon": BAR.horizon, "barrier": BAR.to_dict(),
        "features": list(FEATURE_NAMES), "feature_spec_hash": feature_spec_hash(BAR)}))
    digest = sha256(manifest)
    return manifest, digest, Ensemble.load(manifest, digest, BAR)


def _rows(n: int = 1500, seed: int = 41) -> tuple[np.ndarray, np.ndarray]:
    cs = candles("AAA/USDT", n, "1h", seed=seed)
    ohlcv = np.array([(c.open, c.high, c.low, c.close, c.volume) for c in cs])
    feats = normalise(raw_features(ohlcv, np.array([c.ts for c in cs]), 3_600_000))
    feats = feats.astype(np.float32)
    ok = ~np.isnan(feats).any(axis=1)
    ends = np.array([i for i in range(L - 1, n) if ok[i - L + 1:i + 1].all()])
    return feats, ends


def _ready(worker: AheadWorker) -> None:
    assert worker.wait_ready(120), "the look-ahead process never loaded the ensemble"


def test_the_processes_compute_what_this_one_would(tmp_path: Path) -> None:
    manifest, digest, ens = _saved(tmp_path)
    feats, ends = _rows()
    worker = AheadWorker(2)  # the chunks dealt in turn to two
    try:
        worker.load(manifest, digest, BAR.to_dict())
        _ready(worker)
        cross = ens.module.cross
        job = AheadJob(len(ends), len(NAMES), [i for i in range(len(NAMES)) if i not in cross])
        job.outs[:, cross] = 7.0  # the parent's columns: the process must not touch them
        base = 100  # the first rows are the parent's own (here: zeros, delivered last)
        worker.submit(job, feats, ends[base:], 128, base=base)
        assert job.done == 0  # nothing counts while rows 0..99 are missing
        job.deliver(0, np.zeros((base, len(NAMES), 3), np.float32), np.full(base, -1))
        job.wait(len(ends) - 1)
    finally:
        worker.close()
    assert worker.rows_received == len(ends) - base
    want = np.empty_like(job.outs)
    torch.set_num_threads(1)  # as the process (this thread's own count: models/device.py)
    for lo in range(base, len(ends), 128):
        take = ends[lo:lo + 128]
        want[lo:lo + len(take)], regime = ens.raw_ends(feats, take)
        assert np.array_equal(job.regime[lo:lo + len(take)], regime)
    keep = [i for i in range(len(NAMES)) if i not in cross]
    # the same code, the same chunks, one torch thread each (see above): bit for bit
    assert np.array_equal(job.outs[base:, keep], want[base:, keep])
    assert (job.outs[:, cross] == 7.0).all()
    assert not job.outs[:base, keep].any()  # rows before ``base`` were left to the parent
    forecasts = [i for i in keep if NAMES[i] != "vae"]  # an untrained VAE's stats are 0
    assert job.outs[base:, forecasts, 0].std(axis=0).min() > 1e-4  # real outputs, not 0


async def _signals(src: BatchedEnsembleSignalSource, steps: list) -> dict[tuple[str, int],
                                                                           Signal]:
    out = {}
    for g in steps:
        for s in await src.on_candles(g):
            out[(s.symbol, s.ts)] = s
    return out


@pytest.mark.parametrize("symbols", [2, 1])
def test_a_source_with_the_process_gives_the_signals_of_one_without(tmp_path: Path,
                                                                    symbols: int) -> None:
    """Two symbols (the GNN's cross-section filled here, the rest there), or one (the GNN
    there too, each window its own cross-section): every signal as the source that computes
    all of it in this process gives, to the last bit."""
    manifest, digest, ens = _saved(tmp_path)
    a = candles("AAA/USDT", 1400, "1h", seed=51)
    b = candles("BBB/USDT", 1400, "1h", seed=52)
    series = [_series("AAA/USDT", a), _series("BBB/USDT", b)][:symbols]
    steps = _timestamps(series)
    alone = asyncio.run(_signals(BatchedEnsembleSignalSource(ens, "1h", series, chunk=128,
                                                             threads=1), steps))
    worker = AheadWorker(2)  # the chunks dealt in turn to two
    try:
        worker.load(manifest, digest, BAR.to_dict())
        _ready(worker)  # so that the rows come from it, not from the parent's first chunks
        src = BatchedEnsembleSignalSource(ens, "1h", series, chunk=128, worker=worker)
        beside = asyncio.run(_signals(src, steps))
    finally:
        worker.close()
    assert len(alone) > 1000 * symbols and alone.keys() == beside.keys()
    assert worker.rows_received > 1000 * symbols  # not vacuous: the process computed them
    for k, x in alone.items():
        y = beside[k]
        assert (x.p_up, x.expected_return, x.dispersion, x.regime, x.members) == \
               (y.p_up, y.expected_return, y.dispersion, y.regime, y.members), k


def test_a_job_counts_only_the_rows_in_without_a_gap() -> None:
    """Two processes deliver their chunks in any order: the run may read a row only once
    every chunk up to it is in."""
    job = AheadJob(10, 2, [0, 1])
    rows = np.ones((4, 2, 3), dtype=np.float32)
    job.deliver(4, rows, np.zeros(4, dtype=np.int64))
    assert job.done == 0  # rows 4..7 are in, 0..3 are not
    job.deliver(8, rows[:2], np.zeros(2, dtype=np.int64))
    assert job.done == 0
    job.deliver(0, rows, np.zeros(4, dtype=np.int64))
    assert job.done == 10 and job.outs.all()
    job.wait(9)  # does not block


def test_the_parent_computes_until_the_process_is_ready(tmp_path: Path) -> None:
    """A process that never gets ready (here: its manifest's sha256 is wrong, so it
    refuses to load) leaves the whole look-ahead to the parent: the run goes on."""
    manifest, _, ens = _saved(tmp_path)
    a = candles("AAA/USDT", 900, "1h", seed=53)
    series = [_series("AAA/USDT", a)]
    worker = AheadWorker()
    try:
        worker.load(manifest, "0" * 64, BAR.to_dict())
        src = BatchedEnsembleSignalSource(ens, "1h", series, chunk=128, worker=worker)
        got = asyncio.run(_signals(src, _timestamps(series)))
    finally:
        worker.close()
    want = asyncio.run(_signals(BatchedEnsembleSignalSource(ens, "1h", series, chunk=128,
                                                            threads=1), _timestamps(series)))
    assert len(want) > 300 and got.keys() == want.keys()
    assert all(got[k].p_up == want[k].p_up for k in want)
    assert not worker.is_ready() and worker.rows_received == 0


@pytest.mark.parametrize("which", [0, 1], ids=["the-first", "the-forked-one"])
def test_a_process_that_dies_fails_the_waiting_run_with_its_error(tmp_path: Path,
                                                                  which: int) -> None:
    """Either process killed: the other's chunks still come, the dead one's never do."""
    manifest, digest, _ = _saved(tmp_path)
    feats, ends = _rows(600)
    worker = AheadWorker(2)
    try:
        worker.load(manifest, digest, BAR.to_dict())
        _ready(worker)
        pids = worker.pids()
        assert len(set(pids)) == 2 and pids[0] == worker.pid
        os.kill(pids[which], 9)
        job = AheadJob(len(ends), len(NAMES), range(len(NAMES)))
        worker.submit(job, feats, ends, 128)
        t0 = time.monotonic()
        with pytest.raises(ModelError, match="look-ahead process failed"):
            job.wait(len(ends) - 1)
        assert time.monotonic() - t0 < 30  # it does not hang
    finally:
        worker.close()


def test_the_process_gets_no_stackbot_variable(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Its environment carries no ``STACKBOT_*`` variable: no key, no database URL."""
    monkeypatch.setenv("STACKBOT_EXCHANGE_API_KEY", "do-not-pass-me")
    monkeypatch.setenv("STACKBOT_DATABASE_URL", "postgresql://u:pw@h/db")
    worker = AheadWorker()
    try:
        env = Path(f"/proc/{worker.pid}/environ").read_bytes()
    finally:
        worker.close()
    assert env and b"PATH=" in env
    assert b"STACKBOT_" not in env and b"do-not-pass-me" not in env
    assert os.environ["STACKBOT_EXCHANGE_API_KEY"] == "do-not-pass-me"  # this process keeps it


def test_a_process_that_cannot_start_leaves_no_pipe_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """The forked processes' pipes are made before the first process starts: if it cannot
    start (here: no such executable), the error reaches the caller and every pipe is closed
    (a backtest that retries would otherwise leak descriptors)."""
    import sys

    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        AheadWorker(3)
    assert set(os.listdir("/proc/self/fd")) <= before
