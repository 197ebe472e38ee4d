"""Transformer encoder over the window, with a causal mask and learned positions. Its last
layer computes the last step only: the one whose output reaches the head."""

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
        h = self.inp(x) + self.pos[:, -L:]
        *first, last = self.enc.layers
        for layer in first:
            # is_causal: the mask is causal, so torch need not check it (a host sync that a
            # CUDA graph cannot capture)
            h = layer(h, src_mask=self.mask[:L, :L], is_causal=True)
        return scaled(self.out(_last_step(last, h)))


def _last_step(layer: nn.TransformerEncoderLayer, h: Tensor) -> Tensor:
    """The last layer (pre-norm, as ``TransformerEncoderLayer`` with ``norm_first``) for the
    last step alone, the only one that reaches the head: its query attends to every step,
    which under the causal mask is exactly what that step sees. [B, L, d] -> [B, d]."""
    n = layer.norm1(h)
    y = h[:, -1:] + layer.dropout1(layer.self_attn(n[:, -1:], n, n, need_weights=False)[0])
    ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(y)))))
    return (y + layer.dropout2(ff))[:, 0]
