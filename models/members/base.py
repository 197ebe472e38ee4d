"""One interface for every member: a window batch ``[batch, L, features]`` goes in, a
``[batch, 3]`` tensor comes out: the logit of P(up), the expected forward log return, and the
log variance of that return (the member's uncertainty)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOGIT, MU, LOGVAR = 0, 1, 2


@dataclass(frozen=True)
class MemberConfig:
    n_features: int
    lookback: int
    hidden: int = 32
    dropout: float = 0.1

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Member(nn.Module):
    name: ClassVar[str]
    kind: ClassVar[str] = "supervised"  # supervised | regime | policy
    # True: the batch is the symbols of one timestamp, seen together (the GNN); its
    # ``forward`` takes ``valid``, the rows that are real symbols and not padding
    cross_sectional: ClassVar[bool] = False

    def __init__(self, cfg: MemberConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # A member's forward is ``windows(steps(x))``. ``steps`` is the part that treats each step
    # of the window on its own ([..., F] -> [..., D]), so over a whole series a backtest runs
    # it once per candle instead of once for each of the L windows that hold the candle
    # (``EnsembleModule.forward_rows``). Members without such a part keep the defaults.
    def steps(self, x: Tensor) -> Tensor:
        return x

    def windows(self, s: Tensor) -> Tensor:
        """The rest of the forward over windows of ``steps`` outputs [B, L, D] -> [B, 3]."""
        return self(s)

    def loss(self, out: Tensor, up: Tensor, ret: Tensor, labeled: Tensor) -> Tensor:
        """Direction (BCE on labeled samples) plus a Gaussian NLL on the return."""
        return direction_loss(out, up, labeled) + return_nll(out, ret)

    def training_loss(self, x: Tensor, up: Tensor, ret: Tensor, labeled: Tensor) -> Tensor:
        return self.loss(self(x), up, ret, labeled)


def direction_loss(out: Tensor, up: Tensor, labeled: Tensor) -> Tensor:
    bce = F.binary_cross_entropy_with_logits(out[:, LOGIT], up, reduction="none")
    w = labeled.float()
    return (bce * w).sum() / w.sum().clamp_min(1.0)


def return_nll(out: Tensor, ret: Tensor, scale: float = 100.0) -> Tensor:
    """Gaussian NLL of the return, in percent units so it weighs like the BCE."""
    mu, logvar = out[:, MU] * scale, out[:, LOGVAR].clamp(-10, 10)
    r = ret * scale
    return 0.5 * (logvar + (r - mu) ** 2 / logvar.exp()).mean() * 0.1


def head(d_in: int) -> nn.Linear:
    lin = nn.Linear(d_in, 3)
    nn.init.zeros_(lin.bias)
    return lin


def scaled(out: Tensor) -> Tensor:
    """Heads predict the return in percent; the interface speaks log returns."""
    return torch.stack((out[:, LOGIT], out[:, MU] / 100.0, out[:, LOGVAR]), dim=1)
