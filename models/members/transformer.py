"""Transformer encoder over the window, with a causal mask and learned positions. Its last
layer computes the last step only: the one whose output reaches the head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
            h = (layer(h, src_mask=self.mask[:L, :L], is_causal=True) if self.training
                 else _causal_layer(layer, h, self.mask[:L, :L]))
        return scaled(self.out(_last_step(last, h)))


def _causal_layer(layer: nn.TransformerEncoderLayer, h: Tensor, mask: Tensor) -> Tensor:
    """A pre-norm layer over every step under the causal mask, at inference: what
    ``layer(h, src_mask=mask, is_causal=True)`` computes, with the attention as one
    scaled-dot-product call over the heads (torch's fused inference path masks its softmax
    element by element: 1.3x slower on the look-ahead's 512-window chunks on a CPU)."""
    attn = layer.self_attn
    b, steps, d = h.shape
    heads = attn.num_heads
    n = layer.norm1(h)
    qkv = F.linear(n, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(b, steps, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    y = h + attn.out_proj(o.transpose(1, 2).reshape(b, steps, d))
    return y + layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(y)))))


def _last_step(layer: nn.TransformerEncoderLayer, h: Tensor) -> Tensor:
    """The last layer (pre-norm, as ``TransformerEncoderLayer`` with ``norm_first``) for the
    last step alone, the only one that reaches the head: its query attends to every step,
    which under the causal mask is exactly what that step sees. [B, L, d] -> [B, d].

    At inference the attention is written out: the last step's query and every step's key
    and value from one projection each, then one scaled-dot-product call. What
    ``MultiheadAttention`` computes for them, without the copies its packed projection
    makes when the query is not the key (a third of the member's forward on a CPU);
    training keeps the module, and with it the attention's dropout."""
    n = layer.norm1(h)
    if layer.training:
        att = layer.self_attn(n[:, -1:], n, n, need_weights=False)[0][:, 0]
    else:
        att = _last_query(layer.self_attn, n)
    y = h[:, -1] + layer.dropout1(att)
    ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(y)))))
    return y + layer.dropout2(ff)


def _last_query(attn: nn.MultiheadAttention, n: Tensor) -> Tensor:
    """``attn(n[:, -1:], n, n)`` at inference, [B, L, d] -> [B, d]."""
    b, steps, d = n.shape
    heads = attn.num_heads
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(n[:, -1], w[:d], bias[:d]).view(b, heads, 1, d // heads)
    kv = F.linear(n, w[d:], bias[d:])
    k, v = kv.view(b, steps, 2, heads, d // heads).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, k, v)  # [B, heads, 1, d / heads]
    return attn.out_proj(o.reshape(b, d))
