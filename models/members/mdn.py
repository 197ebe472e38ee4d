"""Mixture-density network: a GRU encoder and a K-component Gaussian mixture over the forward
return. P(up) is the mixture's probability of a positive return, the expected return its mean,
the uncertainty its variance."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.members.base import Member, MemberConfig, direction_loss


class MixtureDensity(Member):
    name = "mdn"

    def __init__(self, cfg: MemberConfig, components: int = 3) -> None:
        super().__init__(cfg)
        self.k = components
        self.rnn = nn.GRU(cfg.n_features, cfg.hidden, batch_first=True)
        self.mix = nn.Linear(cfg.hidden, 3 * components)

    def mixture(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _, h = self.rnn(x)
        logits, mu, log_sigma = self.mix(h[-1]).chunk(3, dim=1)
        return F.log_softmax(logits, dim=1), mu, log_sigma.clamp(-5, 3)  # percent units

    def forward(self, x: Tensor) -> Tensor:
        logpi, mu, log_sigma = self.mixture(x)
        pi, sigma = logpi.exp(), log_sigma.exp()
        p_up = (
            (pi * 0.5 * (1 + torch.erf(mu / (sigma * math.sqrt(2))))).sum(1).clamp(1e-5, 1 - 1e-5)
        )
        mean = (pi * mu).sum(1)
        var = (pi * (sigma**2 + mu**2)).sum(1) - mean**2
        return torch.stack((torch.logit(p_up), mean / 100.0, torch.log(var.clamp_min(1e-8))), 1)

    def training_loss(self, x: Tensor, up: Tensor, ret: Tensor, labeled: Tensor) -> Tensor:
        logpi, mu, log_sigma = self.mixture(x)
        r = (ret * 100.0).unsqueeze(1)
        comp = -0.5 * ((r - mu) / log_sigma.exp()) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
        nll = -torch.logsumexp(logpi + comp, dim=1).mean()
        return 0.1 * nll + direction_loss(self.forward(x), up, labeled)
