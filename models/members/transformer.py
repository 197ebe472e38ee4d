"""Transformer encoder over the window, with a causal mask and learned positions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.members.base import Member, MemberConfig, head, scaled


class TransformerEncoder(Member):
    mask: Tensor  # a registered buffer
    name = "transformer"

    def __init__(self, cfg: MemberConfig, heads: int = 4, layers: int = 2) -> None:
        super().__init__(cfg)
        d = cfg.hidden
        self.inp = nn.Linear(cfg.n_features, d)
        self.pos = nn.Parameter(torch.zeros(1, cfg.lookback, d))
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        mask = torch.triu(torch.full((cfg.lookback, cfg.lookback), float("-inf")), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)
        self.out = head(d)

    def forward(self, x: Tensor) -> Tensor:
        L = x.shape[1]
        # is_causal: the mask is causal, so torch need not check it (a host sync that a CUDA
        # graph cannot capture)
        y = self.enc(self.inp(x) + self.pos[:, -L:], mask=self.mask[:L, :L], is_causal=True)
        return scaled(self.out(y[:, -1]))
