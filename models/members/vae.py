"""VAE regime detector: a GRU encoder to a small latent, an MLP decoder that rebuilds the
window, and K regimes found by k-means on the training latents. The regime id gates the
strategy; as a member it answers with its regime's historical up-rate and return."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.members.base import Member, MemberConfig

# a window is in a regime only when its nearest centroid is at most 90 % as far as the next
CONFIDENT_RATIO = 0.9


class VAERegime(Member):
    centroids: Tensor  # registered buffers
    regime_stats: Tensor
    name = "vae"
    kind = "regime"

    def __init__(self, cfg: MemberConfig, latent: int = 4, regimes: int = 3) -> None:
        super().__init__(cfg)
        self.latent, self.k = latent, regimes
        self.enc = nn.GRU(cfg.n_features, cfg.hidden, batch_first=True)
        self.mu, self.logvar = nn.Linear(cfg.hidden, latent), nn.Linear(cfg.hidden, latent)
        self.dec = nn.Sequential(nn.Linear(latent, cfg.hidden), nn.ReLU(),
                                 nn.Linear(cfg.hidden, cfg.lookback * cfg.n_features))
        self.register_buffer("centroids", torch.zeros(regimes, latent))
        self.register_buffer("regime_stats", torch.zeros(regimes, 3))  # logit, mu, logvar

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _, h = self.enc(x)
        return self.mu(h[-1]), self.logvar(h[-1]).clamp(-8, 8)

    def regime(self, x: Tensor) -> Tensor:
        mu, _ = self.encode(x)
        return torch.cdist(mu, self.centroids).argmin(dim=1)

    def confident_regime(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The nearest regime of each window, and whether the assignment is confident: the
        nearest centroid is clearly nearer than the runner-up (distance ratio below
        ``CONFIDENT_RATIO``). A window between two regimes is not called either."""
        mu, _ = self.encode(x)
        d = torch.cdist(mu, self.centroids)
        two = d.topk(2, dim=1, largest=False).values
        return d.argmin(dim=1), two[:, 0] < CONFIDENT_RATIO * two[:, 1]

    def forward(self, x: Tensor) -> Tensor:
        return self.regime_stats[self.regime(x)]

    def training_loss(self, x: Tensor, up: Tensor, ret: Tensor, labeled: Tensor) -> Tensor:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = self.dec(z).view_as(x)
        rec = F.mse_loss(recon, x, reduction="none").sum(dim=(1, 2)).mean()
        kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(dim=1).mean()
        return (rec + kl) / (x.shape[1] * x.shape[2])

    @torch.no_grad()
    def fit_regimes(self, x: Tensor, up: np.ndarray, ret: np.ndarray, seed: int = 0) -> None:
        """k-means on the training latents, then each regime's up-rate and return moments."""
        mu = self.encode(x)[0].cpu().numpy()
        rng = np.random.default_rng(seed)
        cent = mu[rng.choice(len(mu), self.k, replace=False)]
        for _ in range(50):
            lab = ((mu[:, None] - cent[None]) ** 2).sum(-1).argmin(1)
            new = np.stack([mu[lab == j].mean(0) if (lab == j).any() else cent[j]
                            for j in range(self.k)])
            if np.allclose(new, cent):
                break
            cent = new
        # order regimes by mean return, so ids are stable across retrains: 0 bear .. k-1 bull
        means = np.array([ret[lab == j].mean() if (lab == j).any() else 0.0 for j in range(self.k)])
        order = np.argsort(means)
        cent = cent[order]
        lab = np.argsort(order)[lab]
        stats = []
        for j in range(self.k):
            sel = lab == j
            p = float(np.clip(up[sel].mean() if sel.any() else 0.5, 0.02, 0.98))
            r = ret[sel] if sel.any() else np.zeros(1)
            stats.append([np.log(p / (1 - p)), float(r.mean()),
                          float(np.log(max(r.var() * 1e4, 1e-8)))])
        self.centroids.copy_(torch.as_tensor(cent, dtype=torch.float32))
        self.regime_stats.copy_(torch.as_tensor(stats, dtype=torch.float32))
