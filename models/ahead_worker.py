"""A backtest's look-ahead in a process of its own, beside the engine (CPU backtests).

On the CPU, a backtest's two big costs are the members' forward over every window of the
series (the look-ahead) and the engine's loop over the candles, and both need the Python
interpreter. In one process they run one after the other; here the forward runs in a child
process on the second core while the engine consumes its outputs chunk by chunk as they
arrive, so the run takes about the longer of the two instead of their sum.

The child (``python -m models.ahead_worker``) starts before anything else of the run, so that
importing torch overlaps the parent's own start. It loads the same registered ensemble (the
manifest and its sha256, checked again) and runs ``Ensemble.raw_rows`` on the feature rows the
parent computed, with the same chunks and one torch thread, as the parent would have: the
outputs are the same numbers (tests/test_ahead_worker.py). It gets no secrets: no
``STACKBOT_*`` variable reaches it, and it reads nothing but its standard input.

Messages are pickles over the child's standard input and output (nothing else may write to
that output, so the child points its file descriptor 1 at standard error first):
parent -> child ``("load", manifest, sha256, barrier)``, then ``("job", id, feats, ends,
chunk)``; child -> parent ``("ready", ensemble_id)``, ``("rows", id, lo, outs, regime)`` per
chunk, or ``("error", text)``. The child exits when its input closes.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from bot.errors import ModelError


class AheadJob:
    """One symbol's windows being computed: outputs [rows, members, 3] and regimes [rows],
    filled in time order; ``done`` rows so far. The cross-sectional members' columns (``keep``
    excludes them) are the parent's to fill."""

    def __init__(self, rows: int, members: int, keep: Sequence[int]) -> None:
        self.outs = np.zeros((rows, members, 3), dtype=np.float32)
        self.regime = np.full(rows, -1, dtype=np.int64)
        self.keep = np.asarray(keep, dtype=np.int64)
        self.done = 0
        self.error: str | None = None
        self._cond = threading.Condition()

    def deliver(self, lo: int, outs: np.ndarray, regime: np.ndarray) -> None:
        with self._cond:
            hi = lo + len(outs)
            self.outs[lo:hi, self.keep] = outs[:, self.keep]
            self.regime[lo:hi] = regime
            self.done = hi
            self._cond.notify_all()

    def fail(self, error: str) -> None:
        with self._cond:
            self.error = error
            self._cond.notify_all()

    def complete(self) -> None:
        """Filled by the parent itself (no worker)."""
        self.done = len(self.regime)

    def wait(self, row: int) -> None:
        """Block until ``row`` is in (an error of the worker raises)."""
        with self._cond:
            self._cond.wait_for(lambda: self.done > row or self.error is not None)
            if self.done <= row:
                raise ModelError(f"the look-ahead process failed: {self.error}")


class AheadWorker:
    """The parent's end: start the child, hand it the ensemble and the jobs, and a reader
    thread that files each chunk into its job as it arrives."""

    def __init__(self) -> None:
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - the child's, closed in close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STACKBOT_")}
        self._proc = subprocess.Popen([sys.executable, "-m", "models.ahead_worker"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._err, env=env)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._in: IO[bytes] = self._proc.stdin
        self._jobs: dict[int, AheadJob] = {}
        self._lock = threading.Lock()
        self._failed: str | None = None
        self.ready = threading.Event()  # the child has loaded the ensemble
        self.rows_received = 0
        self._reader = threading.Thread(target=self._read, args=(self._proc.stdout,),
                                        name="ahead-reader", daemon=True)
        self._reader.start()

    def load(self, manifest: Path, sha256: str | None, barrier: dict[str, Any]) -> None:
        self._send(("load", str(manifest), sha256, barrier))

    def submit(self, job: AheadJob, feats: np.ndarray, ends: np.ndarray, chunk: int,
               base: int = 0) -> None:
        """Compute the windows of ``feats`` [T, F] that end at rows ``ends`` into ``job``,
        from its row ``base`` on (the rows before are the parent's)."""
        with self._lock:
            key = len(self._jobs)
            self._jobs[key] = job
            failed = self._failed
        if failed is not None:
            job.fail(failed)
            return
        self._send(("job", key, np.ascontiguousarray(feats), ends, chunk, base))

    def _send(self, msg: tuple[Any, ...]) -> None:
        try:
            pickle.dump(msg, self._in, protocol=pickle.HIGHEST_PROTOCOL)
            self._in.flush()
        except (BrokenPipeError, OSError) as exc:
            self._fail(f"cannot reach it ({exc}); {self._stderr()}")

    def _read(self, out: IO[bytes]) -> None:
        try:
            while True:
                try:
                    msg = pickle.load(out)
                except EOFError:
                    self._fail(f"it exited ({self._proc.wait()}); {self._stderr()}")
                    return
                if msg[0] == "rows":
                    _, key, lo, outs, regime = msg
                    self._jobs[key].deliver(lo, outs, regime)
                    self.rows_received += len(outs)
                elif msg[0] == "ready":
                    self.ready.set()
                elif msg[0] == "error":
                    self._fail(msg[1])
                    return
        except Exception as exc:  # noqa: BLE001 - any failure reaches the waiting engine
            self._fail(f"{type(exc).__name__}: {exc}")

    def _fail(self, error: str) -> None:
        with self._lock:
            if self._failed is None:
                self._failed = error
            jobs = list(self._jobs.values())
        for job in jobs:
            if job.done < len(job.regime):
                job.fail(error)

    def _stderr(self) -> str:
        try:
            self._err.seek(0)
            return self._err.read()[-1500:].decode(errors="replace").strip()
        except OSError:
            return ""

    def close(self) -> None:
        """Close its input (it exits) and wait for it; kill it if it does not go."""
        if self._in.closed:
            return
        with contextlib.suppress(OSError):
            self._in.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=5)
        self._err.close()


def _serve(inp: IO[bytes], out: IO[bytes]) -> None:
    from models.ensemble import Ensemble
    from models.labels import BarrierSpec

    def send(msg: tuple[Any, ...]) -> None:
        pickle.dump(msg, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()

    _, manifest, digest, barrier = pickle.load(inp)
    ens = Ensemble.load(Path(manifest), digest, BarrierSpec.from_dict(barrier), device="cpu")
    send(("ready", ens.id))
    while True:
        try:
            msg = pickle.load(inp)
        except EOFError:
            return
        _, key, feats, ends, chunk, base = msg
        for lo in range(0, len(ends), chunk):
            send(("rows", key, base + lo, *ens.raw_ends(feats, ends[lo : lo + chunk])))


def main() -> None:
    # the pickles own file descriptor 1: anything printed goes to standard error instead
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    import torch

    torch.set_num_threads(1)  # the other core is the engine's
    try:
        _serve(sys.stdin.buffer, out)
    except BrokenPipeError:  # the parent went away
        return
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        try:
            pickle.dump(("error", f"{type(exc).__name__}: {exc}"), out)
            out.flush()
        except OSError:
            pass
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
