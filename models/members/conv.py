"""Temporal convolutional network: dilated causal convolutions with residual blocks.

Only the last step's output reaches the head, so at inference the network computes only the
positions that step depends on: going back from it, each block needs its input at the steps
its kernel reads (``p - j * dilation``), so the last block works on 1 and 2 steps, the first on
all of them (93 of the 320 step-convolutions at lookback 32). The plan is fixed by the window's
length and made once; training keeps the plain convolutions (tests/test_forward_rows.py holds
both equal)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.members.base import Member, MemberConfig, head, scaled


class _CausalBlock(nn.Module):
    def __init__(self, channels: int, dilation: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.dilation, self.kernel = dilation, kernel
        self.conv1 = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.drop(F.relu(self.conv1(F.pad(x, (self.pad, 0)))))  # pad the past only
        y = self.drop(F.relu(self.conv2(F.pad(y, (self.pad, 0)))))
        return F.relu(x + y)

    def reads(self, out: list[int]) -> list[int]:
        """The steps one convolution reads to give the steps ``out`` (before the window: the
        zero padding, left out)."""
        return sorted({p - j * self.dilation for p in out for j in range(self.kernel)
                       if p - j * self.dilation >= 0})


class _Step:
    """One block of the plan: gather indices into its input (one extra zero column stands for
    the padding) for the first convolution, into that convolution's output for the second,
    and the residual's columns."""

    def __init__(self, block: _CausalBlock, have: list[int], out: list[int],
                 device: torch.device) -> None:
        mid = block.reads(out)
        k, d = block.kernel, block.dilation

        def gather(src: list[int], dst: list[int]) -> Tensor:
            col = {p: i for i, p in enumerate(src)}
            col.update({p: len(src) for p in range(-(k - 1) * d, 0)})  # the padding
            # conv1d: out[t] = sum_j W[:, :, j] x[t - (k - 1 - j) * d]
            return torch.tensor([[col[t - (k - 1 - j) * d] for j in range(k)] for t in dst],
                                device=device)

        self.first, self.second = gather(have, mid), gather(mid, out)
        self.residual = torch.tensor([have.index(p) for p in out], device=device)


class TCN(Member):
    name = "tcn"

    def __init__(self, cfg: MemberConfig, kernel: int = 3) -> None:
        super().__init__(cfg)
        self.inp = nn.Conv1d(cfg.n_features, cfg.hidden, 1)
        blocks, d = [], 1
        while d < cfg.lookback:  # receptive field covers the window
            blocks.append(_CausalBlock(cfg.hidden, d, kernel, cfg.dropout))
            d *= 2
        self.blocks = nn.Sequential(*blocks)
        self.out = head(cfg.hidden)
        self._plans: dict[tuple[int, torch.device], list[_Step]] = {}

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            y = self.blocks(self.inp(x.transpose(1, 2)))
            return scaled(self.out(y[:, :, -1]))
        return self.windows(self.steps(x))

    def steps(self, x: Tensor) -> Tensor:
        """The 1x1 input convolution, each step on its own: [..., F] -> [..., hidden]."""
        return F.linear(x, self.inp.weight[:, :, 0], self.inp.bias)

    def windows(self, s: Tensor) -> Tensor:
        """The blocks over windows of input-convolution outputs [B, L, hidden], for the steps
        the last one depends on only (channels last: one matmul per convolution)."""
        h = s
        for block, step in zip(self.blocks, self._plan(s.shape[1], s.device), strict=True):
            assert isinstance(block, _CausalBlock)
            y = F.relu(self._conv(block.conv1, h, step.first))
            y = F.relu(self._conv(block.conv2, y, step.second))
            h = F.relu(h.index_select(1, step.residual) + y)
        return scaled(self.out(h[:, -1]))

    @staticmethod
    def _conv(conv: nn.Conv1d, h: Tensor, idx: Tensor) -> Tensor:
        """``conv`` at the steps ``idx`` gathers ([B, P, C] -> [B, len(idx), C])."""
        b, _, c = h.shape
        padded = torch.cat((h, h.new_zeros(b, 1, c)), dim=1)
        # padded[:, idx].flatten(2) ([B, P', k * C], tap-major), as one index_select: the
        # same copy, 3x faster on a CPU than advanced indexing (which was half the TCN's time)
        taps = padded.index_select(1, idx.reshape(-1)).view(b, len(idx), -1)
        w = conv.weight.permute(0, 2, 1).flatten(1)  # [C_out, k * C], the same order
        return F.linear(taps, w, conv.bias)

    def _plan(self, length: int, device: torch.device) -> list[_Step]:
        plan = self._plans.get((length, device))
        if plan is None:
            outs = [[length - 1]]  # what each block gives, from the last block back
            blocks = [b for b in self.blocks if isinstance(b, _CausalBlock)]
            for block in reversed(blocks[1:]):
                out = outs[-1]
                outs.append(sorted(set(out) | set(block.reads(block.reads(out)))))
            outs.reverse()  # outs[i]: the steps block i gives
            have = list(range(length))
            plan = []
            for block, out in zip(blocks, outs, strict=True):
                plan.append(_Step(block, have, out, device))
                have = out
            self._plans[length, device] = plan
        return plan
