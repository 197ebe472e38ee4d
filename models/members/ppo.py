"""A PPO agent trained in a trading environment that charges fees.

Environment: one step per candle, in time order. The observation is the feature window; the
action is a target position, flat (0) or long (1) (spot). The reward is the position times the
next candle's log return, minus ``fee`` on every change of position.

The policy's probability of "long" is its output: as a member it answers with
``logit = log(p_long / p_flat)``. It forecasts no return (0) and gives no variance (0): it
gives a target position, not a forecast.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.members.base import Member, MemberConfig


class PPOAgent(Member):
    name = "ppo"
    kind = "policy"

    def __init__(self, cfg: MemberConfig) -> None:
        super().__init__(cfg)
        self.enc = nn.GRU(cfg.n_features, cfg.hidden, batch_first=True)
        self.pi = nn.Linear(cfg.hidden, 2)
        self.v = nn.Linear(cfg.hidden, 1)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _, h = self.enc(x)
        return self.pi(h[-1]), self.v(h[-1]).squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        logits, _ = self._heads(x)
        logit = logits[:, 1] - logits[:, 0]
        zeros = torch.zeros_like(logit)
        return torch.stack((logit, zeros, zeros), dim=1)

    def fit(self, x: np.ndarray, next_ret: np.ndarray, fee: float, passes: int = 3,
            horizon: int = 1024, epochs: int = 4, batch: int = 256, lr: float = 3e-4,
            gamma: float = 0.95, lam: float = 0.9, clip: float = 0.2,
            seed: int = 0, progress: object = None) -> list[float]:
        """Train on chronological observations ``x`` [T, L, F] with the following candle's
        log return ``next_ret`` [T]. Returns the mean episode reward of each pass."""
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        scale = 100.0  # rewards in percent
        history = []
        for _ in range(passes):
            total = 0.0
            for start in range(0, len(x) - 1, horizon):
                obs = torch.as_tensor(x[start:start + horizon])
                r = torch.as_tensor(next_ret[start:start + horizon], dtype=torch.float32) * scale
                with torch.no_grad():
                    logits, values = self._heads(obs)
                    dist = torch.distributions.Categorical(logits=logits)
                    u = torch.rand(len(obs), generator=gen)
                    probs = dist.probs[:, 1]
                    act = (u < probs).long()
                    logp = dist.log_prob(act)
                prev = torch.cat((act[:1] * 0, act[:-1]))
                reward = act.float() * r - fee * scale * (act - prev).abs().float()
                total += float(reward.sum())
                adv = torch.zeros_like(reward)
                last: float | torch.Tensor = 0.0
                for t in range(len(reward) - 1, -1, -1):
                    nxt = values[t + 1] if t + 1 < len(reward) else 0.0
                    delta = reward[t] + gamma * nxt - values[t]
                    last = delta + gamma * lam * last
                    adv[t] = last
                ret = adv + values
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                for _ in range(epochs):
                    perm = torch.randperm(len(obs), generator=gen)
                    for i in range(0, len(obs), batch):
                        j = perm[i:i + batch]
                        lg, v = self._heads(obs[j])
                        d = torch.distributions.Categorical(logits=lg)
                        ratio = (d.log_prob(act[j]) - logp[j]).exp()
                        pg = -torch.min(ratio * adv[j],
                                        ratio.clamp(1 - clip, 1 + clip) * adv[j]).mean()
                        loss = pg + 0.5 * F.mse_loss(v, ret[j]) - 0.01 * d.entropy().mean()
                        opt.zero_grad()
                        loss.backward()
                        nn.utils.clip_grad_norm_(self.parameters(), 1.0)
                        opt.step()
            history.append(total / max(1, len(x)))
        return history
