"""The ensemble at inference: every member over every symbol in one batched call, off the event
loop, on ``cuda`` when present (or as configured) and ``cpu`` otherwise.

``EnsembleModule`` (``models/ensemble_module.py``) is one ``nn.Module`` that runs all members
on a ``[symbols, L, F]`` batch and stacks their outputs. That is the unit handed to
``torch.compile`` on CUDA. ``Ensemble`` holds it with what combines its outputs: the
calibration, the meta-learner's stacked P(target first) with online re-weighting by recent
log-loss, constrained to keep the stacked logit's validation mean and variance
(``models/meta.py``) so the p handed to Kelly keeps the stacker's calibration; the expected
return, the dispersion (disagreement of the members' calibrated probabilities), and the VAE
regime. The engine's signal source around it is ``models/ensemble_source.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bot.domain import Regime
from models.calibrate import sigmoid
from models.device import imported_torch
from models.ensemble_spec import Described, checked_spec, load_members, moments_of
from models.labels import BarrierSpec, barrier_spec_of
from models.meta import LogitMoments, Stacker
from models.registry import RegistryError

if TYPE_CHECKING:
    from models.ensemble_module import EnsembleModule
    from models.forward import Forward
    from models.members import Member

@dataclass(frozen=True)
class Calibrated:
    """Per window: calibrated member logits and p [S, M], expected return and dispersion [S],
    and each member's p to 6 decimals [S, M] (what a signal shows, rounded in one call)."""

    logits: np.ndarray
    member_p: np.ndarray
    exp_ret: np.ndarray
    disp: np.ndarray
    shown: np.ndarray

    def rows(self, idx: np.ndarray | slice) -> Calibrated:
        return Calibrated(self.logits[idx], self.member_p[idx], self.exp_ret[idx],
                          self.disp[idx], self.shown[idx])

    def parts(self) -> tuple[np.ndarray, ...]:
        return self.logits, self.member_p, self.exp_ret, self.disp, self.shown


@dataclass
class Prediction:
    """One symbol's view from the ensemble."""

    p_up: float  # calibrated P(target before stop within the horizon)
    expected_return: float
    dispersion: float
    regime: Regime
    member_p: np.ndarray  # calibrated P(target first) per member
    shown: np.ndarray  # member_p to 6 decimals


class Ensemble:
    def __init__(
        self,
        ensemble_id: str,
        members: Sequence[Member],
        temperatures: Sequence[float],
        meta_weights: np.ndarray,
        meta_bias: float,
        lookback: int,
        barrier: BarrierSpec,
        moments: LogitMoments | None = None,
        device: str = "cpu",
        compile: bool = False,
        cuda_graphs: bool = False,
        buckets: bool = False,
    ) -> None:
        self._head(ensemble_id, Described.of(members, temperatures), meta_weights, meta_bias,
                   lookback, barrier, moments, device)
        self._mode = ("graphs" if cuda_graphs else "compile" if compile else "eager", buckets)
        self._build(members)

    def _head(self, ensemble_id: str, described: Described, meta_weights: np.ndarray,
              meta_bias: float, lookback: int, barrier: BarrierSpec,
              moments: LogitMoments | None, device: str) -> None:
        """Everything but the members' weights: calibration, the combiner, the regimes."""
        self.id = ensemble_id
        self.described = described
        self.names = list(described.names)
        self.temps = np.asarray(described.temperatures, dtype=np.float64)
        self.meta_w, self.meta_b = np.asarray(meta_weights), float(meta_bias)
        m = len(self.names)
        self.moments = moments or LogitMoments(np.zeros(m), np.eye(m))
        self.lookback, self.barrier, self.horizon = lookback, barrier, barrier.horizon
        self.device = device
        self.forecasters = np.array(described.forecasters, dtype=bool)
        self.cross = list(described.cross)  # the cross-sectional members' indices
        self.stacker = Stacker(self.meta_w, self.meta_b, self.moments)
        k = described.regimes
        # the regime of each VAE id, index id + 1 (-1: unknown)
        self._regimes = (Regime.UNKNOWN, *(Regime.BEAR if i == 0 else Regime.BULL
                                           if i == k - 1 else Regime.NEUTRAL
                                           for i in range(k)))
        self._module: EnsembleModule | None = None
        self._forward: Forward | None = None
        # ``deferred``: the members and their temperatures, loaded on first use
        self._loader: Callable[[], list[tuple[Member, float]]] | None = None

    def _build(self, members: Sequence[Member]) -> None:
        imported_torch()  # with the thread count asked for, on this thread
        from models.ensemble_module import EnsembleModule
        from models.forward import Forward

        module = EnsembleModule(members).to(self.device).eval()
        self._forward = Forward(module, self.device, *self._mode)
        self._module = module

    @property
    def module(self) -> EnsembleModule:
        """All members as one module; where this ensemble was ``described``, loaded (and
        torch imported) on first use."""
        if self._module is None:
            assert self._loader is not None
            loaded = self._loader()
            members = [m for m, _ in loaded]
            if Described.of(members, [t for _, t in loaded]) != self.described:
                raise RegistryError(f"ensemble {self.id}: its checkpoints are not what its "
                                    "look-ahead process loaded")
            self._build(members)
        assert self._module is not None
        return self._module

    @property
    def forward(self) -> Forward:
        self.module  # noqa: B018 - loaded where deferred
        assert self._forward is not None
        return self._forward

    @classmethod
    def load(
        cls,
        manifest: Path,
        expected_sha256: str | None,
        barrier: BarrierSpec,
        device: str = "cpu",
        compile: bool = False,
        cuda_graphs: bool = False,
    ) -> Ensemble:
        """Load a registered ensemble to trade ``barrier`` (the risk settings' stop, target
        and horizon); one trained for another bet is refused."""
        spec = checked_spec(manifest, expected_sha256, barrier)
        members, temps = zip(*load_members(manifest, spec, barrier), strict=True)
        return cls(
            spec["ensemble_id"],
            members,
            temps,
            np.array(spec["meta_weights"]),
            spec["meta_bias"],
            spec["lookback"],
            barrier,
            moments_of(spec),
            device,
            compile,
            cuda_graphs,
        )

    @classmethod
    def deferred(cls, manifest: Path, expected_sha256: str | None, barrier: BarrierSpec,
                 described: Described) -> Ensemble:
        """The registered ensemble at ``manifest`` (checked as ``load`` checks it) as
        ``described`` by the process that loaded its checkpoints (a CPU backtest's look-ahead
        process, ``models/ahead_worker.py``): the combiner at once, the members' weights, and
        torch, only where a forward runs here (on the CPU), checked to be what was described."""
        spec = checked_spec(manifest, expected_sha256, barrier)
        names = tuple(m["name"] for m in spec["members"])
        if names != described.names:
            raise RegistryError(f"ensemble {spec['ensemble_id']}: its manifest lists {names}, "
                                f"its look-ahead process loaded {described.names}")
        ens = cls.__new__(cls)
        ens._head(spec["ensemble_id"], described, np.array(spec["meta_weights"]),
                  spec["meta_bias"], spec["lookback"], barrier, moments_of(spec), "cpu")
        ens._mode = ("eager", False)
        ens._loader = lambda: load_members(manifest, spec, barrier)
        return ens

    @staticmethod
    def trained_barrier(manifest: Path) -> BarrierSpec | None:
        """The barriers a saved ensemble was trained for (benchmarks load it as it is)."""
        return barrier_spec_of(json.loads(manifest.read_text()))

    def raw(self, x: np.ndarray, cross: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The bare batched forward of one timestamp's symbols: member outputs [S, M, 3] and
        regimes [S] (eager, or replayed from a CUDA graph per bucket: ``models/forward.py``).
        ``cross=False``: any windows, cross-sectional members left at zero."""
        return self.forward(x, cross)

    def raw_rows(self, rows: np.ndarray, ends: np.ndarray,
                 alone: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``raw(windows, cross=False)`` for the windows ending at rows ``ends`` of one
        symbol's consecutive feature rows [T, F]: each member's per-step part runs once per
        row (``EnsembleModule.forward_rows``; ``alone``: with the cross-sectional members'
        columns, each window its own cross-section). Backtests' look-ahead."""
        module = self.module
        import torch

        xb = torch.as_tensor(rows, device=self.device)
        eb = torch.as_tensor(ends, dtype=torch.long, device=self.device)
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16,
                                             enabled=self.device.startswith("cuda")):
            outs, regime = module.forward_rows(xb, eb, self.lookback, alone)
        return outs.float().cpu().numpy(), regime.cpu().numpy()

    def raw_ends(self, rows: np.ndarray, ends: np.ndarray,
                 alone: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``raw_rows`` for the windows ending at rows ``ends`` (ascending) of a whole series'
        feature rows: only the rows those windows span go through the members."""
        first = int(ends[0]) - self.lookback + 1
        return self.raw_rows(rows[first : int(ends[-1]) + 1], ends - first, alone)

    def raw_panel(self, x: np.ndarray) -> np.ndarray:
        """The cross-sectional members over a panel [T, N, L, F]: [T, N, len(cross), 3]."""
        module = self.module
        import torch

        xb = torch.as_tensor(x, device=self.device)
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16,
                                             enabled=self.device.startswith("cuda")):
            out = module.panel(xb)
        return out.float().cpu().numpy().reshape(x.shape[0], x.shape[1], -1, 3)

    def predict(self, x: np.ndarray, online: np.ndarray | None = None) -> list[Prediction]:
        outs, regime = self.raw(x)
        return self.finish(outs, regime, online)

    def finish(self, outs: np.ndarray, regime: np.ndarray,
               online: np.ndarray | None = None) -> list[Prediction]:
        """Calibration and the combiner over member outputs [S, M, 3] (from ``raw``)."""
        return self.combined(self.calibrated(outs), regime, online)

    def calibrated(self, outs: np.ndarray) -> Calibrated:
        """What does not depend on the online weights, for member outputs [S, M, 3]: the
        calibrated logits and p of each member, the expected return and the dispersion."""
        logits = outs[:, :, 0] / self.temps
        member_p = sigmoid(logits)
        mu = outs[:, :, 1]
        exp_ret = mu[:, self.forecasters].mean(axis=1) if self.forecasters.any() else mu.mean(1)
        # to 6 decimals in one call (as round() gives, but for exact decimal halves): shown
        # by the console, read by no decision
        return Calibrated(logits, member_p, exp_ret, member_p.std(axis=1),
                          np.round(member_p.astype(np.float64), 6))

    def combined(self, cal: Calibrated, regime: np.ndarray,
                 online: np.ndarray | None = None) -> list[Prediction]:
        """The meta-learner with the online weights of this moment."""
        p = self.stacker.p(cal.logits, online)
        return [
            Prediction(
                float(p[i]),
                float(cal.exp_ret[i]),
                float(cal.disp[i]),
                self.regime_of(int(regime[i])),
                cal.member_p[i],
                cal.shown[i],
            )
            for i in range(len(p))
        ]

    def regime_of(self, rid: int) -> Regime:
        """The VAE's regime id as a Regime: its k regimes are ordered by mean return, so the
        first is bear, the last bull, those between neutral; -1 is unknown."""
        return self._regimes[rid + 1] if 0 <= rid < len(self._regimes) - 1 else Regime.UNKNOWN
