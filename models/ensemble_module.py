"""All the ensemble's members as one ``nn.Module``: the unit the forward runs (eager, compiled
or replayed from CUDA graphs, ``models/forward.py``), and the look-ahead's forward over a
series (``forward_rows``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from models.members import Member
from models.members.vae import VAERegime


def gather_rows(t: Tensor, idx: Tensor) -> Tensor:
    """``t[idx]`` for an integer index ``idx`` [B, L] into the rows of ``t`` [T, ...]: the same
    copy through ``index_select``, which on a CPU is about 4x faster than advanced indexing on
    the look-ahead's 512-window chunks (the gathers were 6 % of its forward)."""
    return t.index_select(0, idx.reshape(-1)).view(*idx.shape, *t.shape[1:])


class EnsembleModule(nn.Module):
    """All members in one module: [S, L, F] -> [S, M, 3] plus the regime ids [S] (the VAE's
    regime, ordered 0 = bear .. k-1 = bull; -1 with no VAE or where it is not confident).

    The batch is the symbols of one timestamp: a cross-sectional member (the GNN) sees them
    together, and ``valid`` marks the rows that are real symbols rather than padding. With
    ``cross=False`` the batch may be any windows (a backtest's, of one symbol over time) and
    the cross-sectional members' columns are left at zero for ``panel`` to fill."""

    def __init__(self, members: Sequence[Member]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.typed: tuple[Member, ...] = tuple(members)  # the same modules, typed
        self.vae_index = next((i for i, m in enumerate(members) if m.name == "vae"), -1)
        self.cross: list[int] = [i for i, m in enumerate(members) if m.cross_sectional]

    def forward(self, x: Tensor, valid: Tensor | None = None,
                cross: bool = True) -> tuple[Tensor, Tensor]:
        return self._stacked(x, lambda i, m: (
            self.members[i](x, valid) if cross else self._zeros(x)) if m.cross_sectional
            else m(x))

    def forward_rows(self, rows: Tensor, ends: Tensor, lookback: int,
                     alone: bool = False) -> tuple[Tensor, Tensor]:
        """``forward(windows, cross=False)`` for the windows of ``lookback`` rows that end at
        ``ends`` [B] of ``rows`` [T, F] (one symbol's consecutive candles), with each member's
        per-step part (``Member.steps``) run once per row rather than once per window.
        ``alone``: the symbol is the only one at each of those timestamps, so each window is
        a cross-section of its own and the cross-sectional members' columns are computed too
        (a one-symbol panel each)."""
        idx = (ends - (lookback - 1))[:, None] + torch.arange(lookback, device=rows.device)
        # [B, L, F], laid out step by step: the recurrent members' first move (batch-first
        # to time-major) is then free instead of a copy (2 % of the forward on a CPU)
        x = gather_rows(rows, idx.T).transpose(0, 1)

        def windows(m: Member) -> Tensor:
            s = m.steps(rows)
            return m.windows(x if s is rows else gather_rows(s, idx))

        def cross(m: Member) -> Tensor:
            return m.forward_panel(x.unsqueeze(1)) if alone else self._zeros(x)  # type: ignore[operator]

        return self._stacked(x, lambda i, m: cross(m) if m.cross_sectional else windows(m))

    def _stacked(self, x: Tensor,
                 output: Callable[[int, Member], Tensor]) -> tuple[Tensor, Tensor]:
        """Every member's [B, 3] over the windows ``x``, stacked, and the regime ids: the VAE
        gives its regime and its regime's statistics; ``output`` gives each other member's."""
        regime = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        outs = []
        for i, m in enumerate(self.typed):
            if i == self.vae_index and isinstance(m, VAERegime):
                ids, sure = m.confident_regime(x)
                regime = torch.where(sure, ids, regime)
                outs.append(m.regime_stats[ids])
            else:
                outs.append(output(i, m))
        return torch.stack(outs, dim=1), regime

    @staticmethod
    def _zeros(x: Tensor) -> Tensor:
        """A cross-sectional member's columns, left for ``panel`` to fill."""
        return torch.zeros(x.shape[0], 3, device=x.device)

    def panel(self, x: Tensor) -> Tensor:
        """The cross-sectional members over a panel [T, N, L, F] (each row the N symbols of
        one timestamp): [T * N, len(cross), 3]."""
        return torch.stack([self.members[i].forward_panel(x)  # type: ignore[operator]
                            for i in self.cross], dim=1)
