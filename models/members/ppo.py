"""A PPO agent trained in a trading environment that charges fees.

Environment: one step per candle, in time order. The observation is the feature window and
the agent's own position before the step (0 flat, 1 long), since the fee it pays depends on
it. The action is the target position, flat or long (spot). The reward is the position times
the next candle's log return, minus ``fee`` on every change of position. An episode is a
symbol's run of consecutive candles: the position carries across the update chunks, whose
last value is bootstrapped from the next observation, and only the end of the data or a gap
in it ends an episode (value 0, position back to flat).

As a member it answers for the flat agent: ``logit = log(p_long / p_flat)`` with position 0,
its propensity to enter now. It forecasts no return (0) and gives no variance (0): it gives a
target position, not a forecast.
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
        self.pi = nn.Linear(cfg.hidden + 1, 2)  # the encoding and the position
        self.v = nn.Linear(cfg.hidden + 1, 1)

    def _encode(self, x: Tensor) -> Tensor:
        _, h = self.enc(x)
        return h[-1]

    def _policy(self, h: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.cat((h, pos.to(h.dtype)[:, None]), dim=1)
        return self.pi(z), self.v(z).squeeze(-1)

    def _heads(self, x: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        return self._policy(self._encode(x), pos)

    def forward(self, x: Tensor) -> Tensor:
        logits, _ = self._heads(x, torch.zeros(len(x), device=x.device))
        logit = logits[:, 1] - logits[:, 0]
        zeros = torch.zeros_like(logit)
        return torch.stack((logit, zeros, zeros), dim=1)

    def fit(self, x: np.ndarray, next_ret: np.ndarray, fee: float, passes: int = 3,
            horizon: int = 1024, epochs: int = 4, batch: int = 256, lr: float = 3e-4,
            gamma: float = 0.95, lam: float = 0.9, clip: float = 0.2,
            seed: int = 0, starts: np.ndarray | None = None) -> list[float]:
        """Train on chronological observations ``x`` [T, L, F] with the following candle's
        log return ``next_ret`` [T]; ``starts`` [T] marks the steps that begin an episode (the
        first always does; a gap in the data starts another). Returns the mean reward per step
        of each pass."""
        n_all = len(x)
        begins = np.zeros(n_all, dtype=bool) if starts is None else np.asarray(starts, bool).copy()
        if n_all:
            begins[0] = True
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        scale = 100.0  # rewards in percent
        history = []
        for _ in range(passes):
            total = 0.0
            pos = 0
            for start in range(0, n_all, horizon):
                end = min(start + horizon, n_all)
                obs = torch.as_tensor(x[start:end])
                r = torch.as_tensor(next_ret[start:end], dtype=torch.float32) * scale
                act, prev, logp, values, boot = self._rollout(obs, begins[start:end], pos, gen,
                                                              x, end, begins)
                pos = int(act[-1])
                reward = act.float() * r - fee * scale * (act - prev).abs().float()
                total += float(reward.sum())
                # the next step's value: within the chunk the next state's, after it the
                # bootstrap; zero, and no advantage carried back, where an episode ends
                done = np.r_[begins[start + 1:end], end >= n_all or bool(begins[end % n_all])]
                nxt = torch.cat((values[1:], torch.tensor([boot])))
                nxt[torch.as_tensor(done)] = 0.0
                delta = reward + gamma * nxt - values
                adv = torch.zeros_like(reward)
                last: float | Tensor = 0.0
                for t in range(len(reward) - 1, -1, -1):
                    last = delta[t] + gamma * lam * (0.0 if done[t] else 1.0) * last
                    adv[t] = last
                ret = adv + values
                adv = (adv - adv.mean()) / (adv.std() + 1e-8) if len(adv) > 1 else adv
                self._update(obs, prev, act, logp, adv, ret, epochs, batch, clip, opt, gen)
            history.append(total / max(1, n_all))
        return history

    @torch.no_grad()
    def _rollout(self, obs: Tensor, begins: np.ndarray, pos: int, gen: torch.Generator,
                 x: np.ndarray, end: int, all_begins: np.ndarray
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
        """Act through one chunk in time order, each step from the position the last one
        left; returns actions, positions before them, log-probabilities, values and the value
        to bootstrap from after the chunk."""
        n = len(obs)
        h = self._encode(obs)
        l0, v0 = self._policy(h, torch.zeros(n))
        l1, v1 = self._policy(h, torch.ones(n))
        p0 = torch.softmax(l0, dim=1)[:, 1].numpy()
        p1 = torch.softmax(l1, dim=1)[:, 1].numpy()
        u = torch.rand(n, generator=gen).numpy()
        act = np.empty(n, dtype=np.int64)
        prev = np.empty(n, dtype=np.int64)
        for i in range(n):
            if begins[i]:
                pos = 0
            prev[i] = pos
            pos = int(u[i] < (p1[i] if pos else p0[i]))
            act[i] = pos
        a, b = torch.as_tensor(act), torch.as_tensor(prev)
        logits = torch.where(b[:, None] == 1, l1, l0)
        values = torch.where(b == 1, v1, v0)
        logp = torch.distributions.Categorical(logits=logits).log_prob(a)
        boot = 0.0
        if end < len(x) and not all_begins[end]:
            _, vn = self._heads(torch.as_tensor(x[end:end + 1]), torch.tensor([float(pos)]))
            boot = float(vn[0])
        return a, b, logp, values, boot

    def _update(self, obs: Tensor, prev: Tensor, act: Tensor, logp: Tensor, adv: Tensor,
                ret: Tensor, epochs: int, batch: int, clip: float, opt: torch.optim.Optimizer,
                gen: torch.Generator) -> None:
        for _ in range(epochs):
            perm = torch.randperm(len(obs), generator=gen)
            for i in range(0, len(obs), batch):
                j = perm[i:i + batch]
                lg, v = self._heads(obs[j], prev[j])
                d = torch.distributions.Categorical(logits=lg)
                ratio = (d.log_prob(act[j]) - logp[j]).exp()
                pg = -torch.min(ratio * adv[j], ratio.clamp(1 - clip, 1 + clip) * adv[j]).mean()
                loss = pg + 0.5 * F.mse_loss(v, ret[j]) - 0.01 * d.entropy().mean()
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.parameters(), 1.0)
                opt.step()
