"""The ensemble's forward on a numpy batch, eager or replayed from CUDA graphs.

A CUDA graph replays one recorded launch sequence, so its shapes are fixed. The batch is
therefore padded up to a bucket (1, 2, 4, ... 2048 windows; a larger one runs eager, since a
cross-section is never split) by repeating its last window, and only the real rows come back;
the cross-asset GNN is told which rows are padding, so they send it no messages. Each bucket is
captured once, the first time a batch of its size arrives (or ahead, with ``prepare``): the
symbol count of a live run settles on one bucket, so nothing is recorded or recompiled while
it trades. The members treat every window on its own, so padding changes no real row
(tests/test_forward_buckets.py checks that on the CPU, where the same padding runs eager).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

BUCKETS = tuple(2**i for i in range(12))  # 1 .. 2048


def bucket(n: int) -> int:
    """The smallest bucket holding ``n`` windows (n <= the largest bucket)."""
    for b in BUCKETS:
        if b >= n:
            return b
    raise ValueError(f"{n} windows exceed the largest bucket ({BUCKETS[-1]}): chunk them")


@dataclass
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph
    x: Tensor
    valid: Tensor
    outs: Tensor
    regime: Tensor


class Forward:
    """``module`` ([S, L, F] -> ([S, M, 3], [S])) on ``device``. ``mode``: ``eager``;
    ``compile`` (torch.compile, reduce-overhead, one graph per bucket); ``graphs`` (CUDA
    graphs captured per bucket, CUDA only). ``buckets`` pads batches to the buckets even
    eager, which the CPU tests use to check the padding."""

    def __init__(self, module: nn.Module, device: str, mode: str = "eager",
                 buckets: bool = False) -> None:
        cuda = device.startswith("cuda")
        if mode not in ("eager", "compile", "graphs"):
            raise ValueError(f"forward mode {mode!r}: expected eager, compile or graphs")
        if mode != "eager" and not cuda:
            mode = "eager"  # CUDA graphs and reduce-overhead compilation need a GPU
        self.module, self.device, self.mode, self.cuda = module, device, mode, cuda
        self.buckets = buckets or mode != "eager"
        self._call: Any = (torch.compile(module, mode="reduce-overhead", dynamic=False)
                           if mode == "compile" else module)
        self._graphs: dict[tuple[tuple[int, ...], bool], _Captured] = {}
        self.shapes: set[tuple[int, ...]] = set()  # batch shapes the module has run on

    @torch.no_grad()
    def __call__(self, x: np.ndarray, cross: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Member outputs [n, M, 3] and regimes [n] of the n windows ``x`` [n, L, F]."""
        if not self.buckets:
            return self._eager(x, None, cross)
        n = len(x)
        if n > BUCKETS[-1]:  # one cross-section is never split: beyond the buckets, eager
            return self._eager(x, None, cross)
        b = bucket(n)
        valid = np.arange(b) < n
        if b != n:
            x = np.concatenate((x, np.repeat(x[-1:], b - n, axis=0)))
        if self.mode == "graphs":
            outs, regime = self._graph(x, valid, cross)
        else:
            outs, regime = self._eager(x, valid, cross)
        return outs[:n], regime[:n]

    def _eager(self, x: np.ndarray, valid: np.ndarray | None,
               cross: bool) -> tuple[np.ndarray, np.ndarray]:
        self.shapes.add(x.shape)
        xb = torch.as_tensor(x, device=self.device)
        vb = None if valid is None else torch.as_tensor(valid, device=self.device)
        with torch.autocast("cuda", torch.bfloat16, enabled=self.cuda):
            outs, regime = self._call(xb, vb, cross)
        return outs.float().cpu().numpy(), regime.cpu().numpy()

    def prepare(self, n: int, lookback: int, features: int) -> None:
        """Capture (or compile) every bucket up to the one that holds ``n`` windows now,
        before trading, so that the first decisions do not pay for it."""
        if self.mode == "eager":
            return
        for b in BUCKETS:
            if b > bucket(min(n, BUCKETS[-1])):
                break
            self(np.zeros((b, lookback, features), dtype=np.float32))

    def _graph(self, x: np.ndarray, valid: np.ndarray,
               cross: bool) -> tuple[np.ndarray, np.ndarray]:
        key = (x.shape, cross)
        cap = self._graphs.get(key)
        if cap is None:
            cap = self._graphs[key] = self._capture(x.shape, cross)
        cap.x.copy_(torch.from_numpy(np.ascontiguousarray(x)))
        cap.valid.copy_(torch.from_numpy(valid))
        cap.graph.replay()
        return cap.outs.float().cpu().numpy(), cap.regime.cpu().numpy()

    def _capture(self, shape: tuple[int, ...], cross: bool) -> _Captured:
        self.shapes.add(shape)
        static = torch.zeros(shape, device=self.device)
        valid = torch.ones(shape[0], dtype=torch.bool, device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture, as torch's docs ask
            for _ in range(3):
                with torch.autocast("cuda", torch.bfloat16, cache_enabled=False):
                    self.module(static, valid, cross)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.autocast("cuda", torch.bfloat16,
                                                     cache_enabled=False):
            outs, regime = self.module(static, valid, cross)
        return _Captured(graph, static, valid, outs, regime)
