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
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import torch

T = TypeVar("T")

_TORCH = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")


def pick_device(requested: str) -> str:
    """``auto``: CUDA when present, the CPU otherwise; anything else as asked."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def set_threads(executor: Executor, threads: int) -> None:
    """torch's intra-op thread count for the work ``executor`` runs. The count is each OS
    thread's own (its OpenMP setting; a thread that has run parallel work keeps what it had),
    so setting it on the caller's thread would not reach the torch thread that had loaded the
    ensemble: live decisions ran on two threads where one was meant (and benchmarked)."""
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
