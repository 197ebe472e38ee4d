"""Temporal Fusion Transformer (Lim et al. 2021), sized for a trading window: per-step variable
selection, an LSTM encoder, interpretable multi-head attention (one value projection shared by
all heads, heads averaged), gated residual networks, and quantile outputs.

The three quantile heads (10 %, 50 %, 90 % of the forward log return) are trained with the
pinball loss each on its own level, and are monotone by construction: the lowest, then two
non-negative (softplus) increments. The median is the member's expected return and the
10-90 spread its uncertainty. ``interpret`` reads the variable-selection weights and the
temporal attention, for the evaluate report's importance plot."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.members.base import Member, MemberConfig, direction_loss

QUANTILES = (0.1, 0.5, 0.9)
Z90 = 1.2816  # standard normal quantile at 0.9


class GRN(nn.Module):
    """Gated residual network: ELU MLP, GLU gate, residual, layer norm."""

    def __init__(self, d_in: int, d: int, d_out: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        d_out = d_out or d
        self.fc1, self.fc2 = nn.Linear(d_in, d), nn.Linear(d, 2 * d_out)
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()
        self.norm = nn.LayerNorm(d_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = F.glu(self.fc2(self.drop(F.elu(self.fc1(x)))), dim=-1)
        return self.norm(self.skip(x) + y)


class InterpretableMHA(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.h, self.dk = heads, d // heads
        self.q, self.k = nn.Linear(d, d), nn.Linear(d, d)
        self.v = nn.Linear(d, self.dk)  # shared across heads
        self.o = nn.Linear(self.dk, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The last step's causal attention over the window, [B, d], and its weights [B, L].

        Only the last step's output reaches the heads, so only its query is computed: under
        the causal mask the last step sees every step, so its row of the full [L, L] attention
        has no masked entry and equals this one."""
        B, L, _ = x.shape
        q = self.q(x[:, -1:]).view(B, 1, self.h, self.dk).transpose(1, 2)  # [B, h, 1, dk]
        k = self.k(x).view(B, L, self.h, self.dk).transpose(1, 2)  # [B, h, L, dk]
        att = (q @ k.transpose(-1, -2)) / self.dk ** 0.5
        w = self.drop(torch.softmax(att, dim=-1))  # [B, h, 1, L]
        v = self.v(x).unsqueeze(1)  # [B, 1, L, dk]
        out = (w @ v).mean(dim=1)  # heads averaged: one interpretable attention pattern
        return self.o(out[:, 0]), w.mean(dim=1)[:, 0]


class TemporalFusionTransformer(Member):
    name = "tft"

    def __init__(self, cfg: MemberConfig, heads: int = 4) -> None:
        super().__init__(cfg)
        d, nf = cfg.hidden, cfg.n_features
        self.var_embed = nn.ModuleList([nn.Linear(1, d) for _ in range(nf)])
        self.var_grns = nn.ModuleList([GRN(d, d, dropout=cfg.dropout) for _ in range(nf)])
        self.selector = GRN(nf * d, d, nf, cfg.dropout)
        self.lstm = nn.LSTM(d, d, batch_first=True)
        self.post_lstm = GRN(d, d, dropout=cfg.dropout)
        self.attn = InterpretableMHA(d, heads, cfg.dropout)
        self.post_attn = GRN(d, d, dropout=cfg.dropout)
        self.quant = nn.Linear(d, len(QUANTILES))
        self.dir = nn.Linear(d, 1)

    def _select(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Variable selection, each step on its own: [..., nf] -> the selected embedding
        [..., d] and the weights [..., nf]."""
        emb = [grn(lin(x[..., i:i + 1])) for i, (lin, grn)
               in enumerate(zip(self.var_embed, self.var_grns, strict=False))]
        stacked = torch.stack(emb, dim=-2)  # [..., nf, d]
        weights = torch.softmax(self.selector(stacked.flatten(-2)), dim=-1)  # [..., nf]
        return (weights.unsqueeze(-1) * stacked).sum(dim=-2), weights

    def _temporal(self, sel: Tensor) -> tuple[Tensor, Tensor]:
        """Over the window of selected steps [B, L, d]: the encoding [B, d] and the last
        step's attention over the window [B, L]."""
        enc, _ = self.lstm(sel)
        enc = self.post_lstm(enc + sel)
        att, att_w = self.attn(enc)
        return self.post_attn(att + enc[:, -1]), att_w

    def steps(self, x: Tensor) -> Tensor:
        """Variable selection is per step: a backtest computes it once per candle."""
        return self._select(x)[0]

    def windows(self, s: Tensor) -> Tensor:
        z = self._temporal(s)[0]
        return self._out(z, self._quantiles(z))

    def _encode(self, x: Tensor) -> Tensor:
        return self._temporal(self.steps(x))[0]

    def _encode_explained(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The encoding [B, d], the variable-selection weights [B, L, nf] and the attention
        of the last step over the window [B, L]."""
        sel, weights = self._select(x)
        z, att = self._temporal(sel)
        return z, weights, att

    @torch.no_grad()
    def interpret(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """What the model looks at, over the windows ``x``: each feature's variable-selection
        weight averaged over windows and steps [nf] (they sum to 1), and the last step's
        attention over the window's steps, averaged over windows [L] (sums to 1)."""
        was = self.training
        self.eval()
        _, weights, att = self._encode_explained(x)
        self.train(was)
        return weights.mean(dim=(0, 1)), att.mean(dim=0)

    def _quantiles(self, z: Tensor) -> Tensor:
        """[B, 3] quantiles in percent of log return, ordered by construction."""
        raw = self.quant(z)
        steps = F.softplus(raw[:, 1:])
        return torch.cat((raw[:, :1], raw[:, :1] + steps.cumsum(dim=1)), dim=1)

    def _out(self, z: Tensor, q: Tensor) -> Tensor:
        sigma = ((q[:, 2] - q[:, 0]) / (2 * Z90)).clamp_min(1e-4)  # percent
        return torch.stack((self.dir(z).squeeze(1), q[:, 1] / 100.0, 2 * torch.log(sigma)), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.windows(self.steps(x))

    def quantiles(self, x: Tensor) -> Tensor:
        """The 10 %, 50 % and 90 % quantiles of the forward log return, [B, 3]."""
        return self._quantiles(self._encode(x)) / 100.0

    def training_loss(self, x: Tensor, up: Tensor, ret: Tensor, labeled: Tensor) -> Tensor:
        """Direction (BCE) plus the pinball loss of each quantile head at its own level."""
        z = self._encode(x)
        q = self._quantiles(z)
        r = (ret * 100.0).unsqueeze(1)
        tau = torch.tensor(QUANTILES, device=x.device, dtype=q.dtype).unsqueeze(0)
        e = r - q
        pinball = torch.maximum(tau * e, (tau - 1) * e).mean(dim=0).sum()
        return direction_loss(self._out(z, q), up, labeled) + 0.1 * pinball
