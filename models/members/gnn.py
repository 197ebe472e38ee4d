"""Cross-asset graph network: symbols are nodes, edges come from the rolling correlation of
their returns over the window, each node's sequence is encoded by a GRU, and two rounds of
message passing mix what the assets are doing.

``forward`` takes the symbols of one timestamp as its batch ``[symbols, L, F]`` (one graph);
training feeds a panel ``[time, symbols, L, F]`` through ``forward_panel``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.features import FEATURE_NAMES
from models.members.base import Member, MemberConfig, head, scaled

RET_COL = FEATURE_NAMES.index("logret_1")


def correlation_edges(x: Tensor) -> Tensor:
    """[T, N, L, F] -> [T, N, N] non-negative edge weights from return correlation
    (self-loops included)."""
    r = x[..., RET_COL]
    r = r - r.mean(dim=-1, keepdim=True)
    cov = r @ r.transpose(-1, -2)
    sd = cov.diagonal(dim1=-2, dim2=-1).clamp_min(1e-8).sqrt()
    corr = cov / (sd.unsqueeze(-1) * sd.unsqueeze(-2))
    eye = torch.eye(x.shape[1], device=x.device).expand_as(corr)
    return torch.where(eye > 0, torch.ones_like(corr), F.relu(corr))


class CrossAssetGNN(Member):
    name = "gnn"
    cross_sectional = True

    def __init__(self, cfg: MemberConfig, rounds: int = 2) -> None:
        super().__init__(cfg)
        self.enc = nn.GRU(cfg.n_features, cfg.hidden, batch_first=True)
        self.msg = nn.ModuleList([nn.Linear(cfg.hidden, cfg.hidden) for _ in range(rounds)])
        self.upd = nn.ModuleList([nn.Linear(2 * cfg.hidden, cfg.hidden) for _ in range(rounds)])
        self.out = head(cfg.hidden)

    def forward_panel(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """``valid`` [T, N]: rows that are real symbols. Padding rows (a CUDA graph's fixed
        batch) send no messages, so the real rows' outputs are those without them."""
        T, N, L, Fe = x.shape
        _, h = self.enc(x.reshape(T * N, L, Fe))
        h = h[-1].view(T, N, -1)
        a = correlation_edges(x)
        if valid is not None:
            a = a * valid.to(a.dtype).unsqueeze(-2)
        a = a / a.sum(dim=-1, keepdim=True)
        for msg, upd in zip(self.msg, self.upd, strict=False):
            m = a @ msg(h)
            h = h + F.relu(upd(torch.cat((h, m), dim=-1)))
        return scaled(self.out(h).view(T * N, 3))

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        return self.forward_panel(x.unsqueeze(0), None if valid is None else valid.unsqueeze(0))
