"""Where torch runs: which device, and on which thread.

One OS thread runs every torch operation of a bot process: loading the ensemble, a backtest's
look-ahead and every live decision. torch's CPU kernels run OpenMP teams; once two threads
have each run parallel work, on a 2-core machine their teams contend, and a backtest's
look-ahead ran 2.8x slower after the ensemble had been loaded on the main thread (15.7 s
against 5.7 s for BTC/USDT 1h, bench/RESULTS.md). The thread is also off the event loop.
Training runs in a process of its own and is not affected; so do a CPU backtest's look-ahead
processes (``models/ahead_worker.py``), one torch thread each.

The intra-op thread count is each OS thread's own (its OpenMP setting, fixed the first time
the thread runs parallel work): ``set_threads`` sets it on the thread that scores.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")

_TORCH = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
# the count ``set_threads`` asked for before torch was imported: set by ``imported_torch``
_pending_threads: int | None = None


def imported_torch() -> ModuleType:
    """torch, imported here where it was not yet (a CPU backtest's process may never need
    it: its look-ahead processes hold the weights), with the thread count ``set_threads``
    asked for set on this thread, the one that imports it to score."""
    global _pending_threads
    import torch

    if _pending_threads is not None:
        torch.set_num_threads(_pending_threads)
        _pending_threads = None
    return torch


def pick_device(requested: str) -> str:
    """``auto``: CUDA when present, the CPU otherwise; anything else as asked."""
    if requested == "auto":
        return "cuda" if imported_torch().cuda.is_available() else "cpu"
    return requested


def cuda_possible(requested: str) -> bool:
    """Whether ``requested`` may resolve to CUDA, without importing torch: asked for, or
    ``auto`` on a machine with NVIDIA's driver loaded (``/dev/nvidiactl``; without it CUDA
    is never available)."""
    return requested.startswith("cuda") or (requested == "auto"
                                            and os.path.exists("/dev/nvidiactl"))


def set_threads(executor: Executor, threads: int) -> None:
    """torch's intra-op thread count for the work ``executor`` runs. The count is each OS
    thread's own (its OpenMP setting; a thread that has run parallel work keeps what it had),
    so setting it on the caller's thread would not reach the torch thread that had loaded the
    ensemble: live decisions ran on two threads where one was meant (and benchmarked).
    Before torch is imported, the count waits for ``imported_torch``."""
    global _pending_threads
    if "torch" not in sys.modules:
        _pending_threads = threads
        return
    import torch

    if threading.current_thread().name.startswith("torch"):
        torch.set_num_threads(threads)  # on the torch thread already: waiting would deadlock
    else:
        executor.submit(torch.set_num_threads, threads).result()


def torch_thread() -> Executor:
    """The one thread this process runs torch on."""
    return _TORCH


async def in_torch_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the torch thread, awaited from the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_TORCH, partial(fn, *args,
                                                                            **kwargs))
