"""Temporal convolutional network: dilated causal convolutions with residual blocks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from models.members.base import Member, MemberConfig, head, scaled


class _CausalBlock(nn.Module):
    def __init__(self, channels: int, dilation: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.drop(F.relu(self.conv1(F.pad(x, (self.pad, 0)))))  # pad the past only
        y = self.drop(F.relu(self.conv2(F.pad(y, (self.pad, 0)))))
        return F.relu(x + y)


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

    def forward(self, x: Tensor) -> Tensor:
        y = self.blocks(self.inp(x.transpose(1, 2)))
        return scaled(self.out(y[:, :, -1]))
