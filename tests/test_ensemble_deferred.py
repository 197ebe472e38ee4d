"""A CPU backtest's process combines the look-ahead processes' outputs without importing
torch (1.5 s of CPU on the benchmark box): its ensemble is ``Ensemble.deferred``, the
combiner built from what the first look-ahead process describes once it has loaded the
checked files (models/ensemble_spec.py, models/ahead_worker.py). It must give the signals of
the ensemble loaded here to the last bit, load the weights (and torch) only where a forward
runs here, and refuse files that are not what was described."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bot.errors import RegistryError
from models.ahead_worker import AheadWorker
from models.ensemble import Ensemble
from models.ensemble_batch import BatchedEnsembleSignalSource
from models.ensemble_spec import Described
from tests.helpers import candles
from tests.test_ahead_worker import BAR, _saved, _signals
from tests.test_ensemble_batch import _series, _timestamps

ROOT = Path(__file__).resolve().parents[1]


def test_the_described_ensemble_gives_the_signals_of_the_loaded_one(tmp_path: Path) -> None:
    """One series: every member there (the GNN too), the combiner here, no forward here."""
    manifest, digest, ens = _saved(tmp_path)
    series = [_series("AAA/USDT", candles("AAA/USDT", 1200, "1h", seed=61))]
    steps = _timestamps(series)
    want = asyncio.run(_signals(BatchedEnsembleSignalSource(ens, "1h", series, chunk=128,
                                                            threads=1), steps))
    worker = AheadWorker(2)
    try:
        deferred = worker.ensemble(manifest, digest, BAR, timeout=120)
        assert deferred is not None, "the look-ahead process never described the ensemble"
        assert worker.is_ready()  # the forked one too: no chunk is left to this process
        assert deferred.described == ens.described and deferred.cross == ens.cross
        src = BatchedEnsembleSignalSource(deferred, "1h", series, chunk=128, worker=worker)
        got = asyncio.run(_signals(src, steps))
    finally:
        worker.close()
    assert len(want) > 800 and got.keys() == want.keys()
    assert worker.rows_received >= len(want)  # every window came from the processes
    assert deferred._module is None  # no member was loaded here: no forward ran here
    for k, x in want.items():
        y = got[k]
        assert (x.p_up, x.expected_return, x.dispersion, x.regime, x.members) == \
               (y.p_up, y.expected_return, y.dispersion, y.regime, y.members), k


def test_a_forward_here_loads_the_members_as_described(tmp_path: Path) -> None:
    """A candle off the script (or a look-ahead process that is late) needs a forward here:
    the members load on first use, with the outputs of the ensemble loaded at once."""
    manifest, digest, ens = _saved(tmp_path)
    spec = json.loads(manifest.read_text())
    deferred = Ensemble.deferred(manifest, digest, BAR, ens.described)
    assert deferred._module is None
    x = np.random.default_rng(3).standard_normal((4, ens.lookback, 20)).astype(np.float32)
    a, ra = ens.raw(x)
    b, rb = deferred.raw(x)
    assert deferred._module is not None and len(spec["members"]) == len(deferred.names)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ra, rb)


def test_files_that_are_not_what_was_described_are_refused(tmp_path: Path) -> None:
    manifest, digest, ens = _saved(tmp_path)
    d = ens.described
    other = Described(d.names[::-1], d.temperatures, d.forecasters, d.cross, d.regimes)
    with pytest.raises(RegistryError, match="its look-ahead process loaded"):
        Ensemble.deferred(manifest, digest, BAR, other)
    # the names agree, a temperature does not: refused when the members load here
    hotter = Described(d.names, (9.0, *d.temperatures[1:]), d.forecasters, d.cross, d.regimes)
    deferred = Ensemble.deferred(manifest, digest, BAR, hotter)
    with pytest.raises(RegistryError, match="not what its look-ahead process loaded"):
        deferred.raw(np.zeros((1, ens.lookback, 20), dtype=np.float32))
    with pytest.raises(RegistryError, match="sha256"):
        Ensemble.deferred(manifest, "0" * 64, BAR, d)


def test_a_process_that_refuses_the_files_answers_at_once(tmp_path: Path) -> None:
    """A wrong sha256: the process refuses to load, and the caller learns it as soon as the
    process says so (it then loads here, which raises why), not after the timeout."""
    manifest, _, _ = _saved(tmp_path)
    worker = AheadWorker()
    try:
        t0 = time.monotonic()
        assert worker.ensemble(manifest, "0" * 64, BAR, timeout=120) is None
        assert time.monotonic() - t0 < 60
    finally:
        worker.close()


def test_the_backtest_process_never_imports_torch(tmp_path: Path) -> None:
    """In a fresh interpreter, as ``stackbot backtest`` runs: the look-ahead processes' ensemble
    and a batched source over one series produce every signal, and torch is never imported
    there."""
    manifest, digest, _ = _saved(tmp_path)
    data = tmp_path / "series.json"
    cs = candles("AAA/USDT", 900, "1h", seed=62)
    data.write_text(json.dumps([[c.ts, c.open, c.high, c.low, c.close, c.volume] for c in cs]))
    script = f"""
import asyncio, json, sys
from pathlib import Path
from bot.domain import Candle, CandleSeries
from models.ahead_worker import AheadWorker
from models.ensemble_batch import BatchedEnsembleSignalSource
from models.labels import BarrierSpec
rows = json.loads(Path({str(data)!r}).read_text())
cs = [Candle("AAA/USDT", "1h", r[0], *r[1:]) for r in rows]
series = [CandleSeries(Path("AAA_USDT.csv"), "AAA/USDT", "1h", cs, [], False)]
worker = AheadWorker(2)
ens = worker.ensemble(Path({str(manifest)!r}), {digest!r}, BarrierSpec.from_dict({BAR.to_dict()!r}))
assert ens is not None
src = BatchedEnsembleSignalSource(ens, "1h", series, chunk=128, worker=worker)
async def run():
    n = 0
    for c in cs:
        n += len(await src.on_candles([c]))
    return n
n = asyncio.run(run())
worker.close()
print(json.dumps({{"signals": n, "torch": "torch" in sys.modules}}))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["signals"] > 400  # not vacuous: the run scored
    assert got["torch"] is False


@pytest.mark.parametrize(("argv", "early"), [
    (["backtest", "--data", "x.csv", "--strategy", "ensemble"], True),
    (["backtest", "--strategy=ensemble"], True),
    (["backtest", "--data", "x.csv"], False),
    (["backtest", "--strategy", "baseline"], False),
    (["run", "--strategy", "ensemble"], False),
    (["backtest", "--strategy"], False),
])
def test_the_command_line_starts_the_look_ahead_first_only_for_an_ensemble_backtest(
        monkeypatch: pytest.MonkeyPatch, argv: list[str], early: bool) -> None:
    import bot.__main__ as entry
    import bot.cli
    import models.ahead_worker

    started: list[bool] = []
    monkeypatch.setattr(models.ahead_worker, "start_early", lambda: started.append(True))
    monkeypatch.setattr(bot.cli, "app", lambda prog_name: None)
    monkeypatch.setattr(sys, "argv", ["stackbot", *argv])
    entry.main()
    assert bool(started) is early


def test_a_run_closes_early_processes_it_does_not_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """Started for an ensemble backtest the settings then run otherwise: taken once, then gone."""
    import models.ahead_worker as ahead

    monkeypatch.setattr(ahead, "processes", lambda: 2)  # as on 2 cores, whatever this box has
    ahead.start_early()
    worker = ahead.take_early()
    try:
        assert worker is not None and ahead.take_early() is None
    finally:
        if worker is not None:
            worker.close()
    assert worker._proc.poll() is not None  # the process is gone
