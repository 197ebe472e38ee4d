"""A backtest's look-ahead in processes of their own, beside the engine (CPU backtests).

On the CPU, a backtest's two big costs are the members' forward over every window of the
series (the look-ahead) and the engine's loop over the candles, and both need the Python
interpreter, whose lock one process's threads share (a look-ahead on a thread beside the
engine's loop ran at 3 % of its speed). In one process they run one after the other; here
the forward runs in child processes, each chunk of windows in turn to the next child, while
the engine takes the outputs chunk by chunk as they arrive, so the run takes about the longer
of the two instead of their sum.

The children (``python -m models.ahead_worker``) start before anything else of the run, so
that importing torch overlaps the parent's own start; until they are ready the parent
computes the first chunks itself, and all of them if they never are. Each loads the same
registered ensemble (the manifest and its sha256, checked again) and runs
``Ensemble.raw_rows`` on the feature rows the parent computed, with the same chunks and one
torch thread: the outputs are the numbers the parent would compute on one thread, bit for
bit (tests/test_ahead_worker.py). They get no secrets: no ``STACKBOT_*`` variable reaches
them, and they read nothing but their standard input.

Messages are pickles over a child's standard input and output (nothing else may write to
that output, so the child points its file descriptor 1 at standard error first):
parent -> child ``("load", manifest, sha256, barrier)``, then ``("job", id, feats, ends,
chunk, base, first, stride)`` (its chunks: ``first``, ``first + stride``, ...); child ->
parent ``("ready", ensemble_id)``, ``("rows", id, lo, outs, regime)`` per chunk, or
``("error", text)``. A child exits when its input closes; one that fails fails the run's
waiting job with its error (``ModelError``), never leaves it waiting.
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
    filled chunk by chunk in any order; ``done``: the rows in from the first on, with no gap.
    The cross-sectional members' columns (``keep`` excludes them) are the parent's to fill."""

    def __init__(self, rows: int, members: int, keep: Sequence[int]) -> None:
        self.outs = np.zeros((rows, members, 3), dtype=np.float32)
        self.regime = np.full(rows, -1, dtype=np.int64)
        self.keep = np.asarray(keep, dtype=np.int64)
        self.done = 0
        self.error: str | None = None
        self._ends: dict[int, int] = {}  # chunks in past ``done``: first row -> end
        self._cond = threading.Condition()

    def deliver(self, lo: int, outs: np.ndarray, regime: np.ndarray) -> None:
        with self._cond:
            hi = lo + len(outs)
            self.outs[lo:hi, self.keep] = outs[:, self.keep]
            self.regime[lo:hi] = regime
            self._ends[lo] = hi
            while self.done in self._ends:
                self.done = self._ends.pop(self.done)
            self._cond.notify_all()

    def fail(self, error: str) -> None:
        with self._cond:
            self.error = error
            self._cond.notify_all()

    def wait(self, row: int) -> None:
        """Block until ``row`` is in (an error of the worker raises)."""
        with self._cond:
            self._cond.wait_for(lambda: self.done > row or self.error is not None)
            if self.done <= row:
                raise ModelError(f"the look-ahead process failed: {self.error}")


class _Child:
    """One look-ahead process: its input, its standard error (a file), and whether it has
    loaded the ensemble."""

    def __init__(self, env: dict[str, str]) -> None:
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-m", "models.ahead_worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, env=env)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        self.ready = threading.Event()
        self.reader: threading.Thread | None = None

    def stderr(self) -> str:
        try:
            self.err.seek(0)
            return self.err.read()[-1500:].decode(errors="replace").strip()
        except OSError:
            return ""


class AheadWorker:
    """The parent's end: start the children (``processes``, one torch thread each), hand
    them the ensemble and the jobs, a job's chunks dealt in turn, and a reader thread per
    child that files each chunk into its job as it arrives."""

    def __init__(self, processes: int = 1) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STACKBOT_")}
        self._children = [_Child(env) for _ in range(max(1, processes))]
        self._jobs: dict[int, AheadJob] = {}
        self._lock = threading.Lock()
        self._failed: str | None = None
        self.rows_received = 0
        for i, child in enumerate(self._children):
            child.reader = threading.Thread(target=self._read, args=(child,),
                                            name=f"ahead-reader-{i}", daemon=True)
            child.reader.start()

    def is_ready(self) -> bool:
        """Every child has loaded the ensemble."""
        return all(c.ready.is_set() for c in self._children)

    def wait_ready(self, timeout: float) -> bool:
        return all(c.ready.wait(timeout) for c in self._children)

    def load(self, manifest: Path, sha256: str | None, barrier: dict[str, Any]) -> None:
        for child in self._children:
            self._send(child, ("load", str(manifest), sha256, barrier))

    def submit(self, job: AheadJob, feats: np.ndarray, ends: np.ndarray, chunk: int,
               base: int = 0) -> None:
        """Compute the windows of ``feats`` [T, F] that end at rows ``ends`` into ``job``,
        from its row ``base`` on (the rows before are the parent's): the k-th chunk of
        ``chunk`` windows goes to child k mod n."""
        with self._lock:
            key = len(self._jobs)
            self._jobs[key] = job
            failed = self._failed
        if failed is not None:
            job.fail(failed)
            return
        feats = np.ascontiguousarray(feats)
        n = len(self._children)
        for i, child in enumerate(self._children):
            self._send(child, ("job", key, feats, ends, chunk, base, i, n))

    def _send(self, child: _Child, msg: tuple[Any, ...]) -> None:
        try:
            pickle.dump(msg, child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            child.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self._fail(f"cannot reach it ({exc}); {child.stderr()}")

    def _read(self, child: _Child) -> None:
        try:
            while True:
                try:
                    msg = pickle.load(child.stdout)
                except EOFError:
                    self._fail(f"it exited ({child.proc.wait()}); {child.stderr()}")
                    return
                if msg[0] == "rows":
                    _, key, lo, outs, regime = msg
                    self._jobs[key].deliver(lo, outs, regime)
                    with self._lock:
                        self.rows_received += len(outs)
                elif msg[0] == "ready":
                    child.ready.set()
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

    def close(self) -> None:
        """Close their input (they exit) and wait for them; kill one that does not go."""
        for child in self._children:
            if child.stdin.closed:
                continue
            with contextlib.suppress(OSError):
                child.stdin.close()
            try:
                child.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            if child.reader is not None:
                child.reader.join(timeout=5)
            child.err.close()


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
        _, key, feats, ends, chunk, base, first, stride = msg
        for lo in range(first * chunk, len(ends), stride * chunk):  # this child's turns
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
