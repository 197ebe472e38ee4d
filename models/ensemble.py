"""The ensemble at inference: every member over every symbol in one batched call, off the event
loop, on ``cuda`` when present (or as configured) and ``cpu`` otherwise.

``EnsembleModule`` (``models/ensemble_module.py``) is one ``nn.Module`` that runs all members
on a ``[symbols, L, F]`` batch and stacks their outputs. That is the unit handed to
``torch.compile`` on CUDA.
``EnsembleSignalSource`` is the engine's signal source. It keeps a rolling candle buffer per
symbol, computes the same causal features as training, and combines the members: the
meta-learner's stacked P(target first) with online re-weighting by recent log-loss,
constrained to keep the stacked logit's validation mean and variance (``models/meta.py``) so
the p handed to Kelly keeps the stacker's calibration; the expected return, the dispersion
(disagreement of the members' calibrated probabilities), and the VAE regime. The online
weights learn each outcome on the candle that touches the target or the stop, as the
training labels do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bot.domain import Candle, Gap, PromotedModel, Regime, Signal, timeframe_ms
from models.calibrate import sigmoid
from models.device import imported_torch, set_threads, torch_thread
from models.ensemble_spec import Described, checked_spec, load_members, moments_of
from models.features import (
    FEATURE_NAMES,
    NORM_WINDOW,
    WARMUP,
    History,
    history_rows,
    normalise,
    raw_features,
)
from models.labels import BarrierSpec, barrier_spec_of
from models.meta import LogitMoments, OnlineWeights, Stacker
from models.registry import RegistryError

if TYPE_CHECKING:
    from models.ensemble_module import EnsembleModule
    from models.forward import Forward
    from models.members import Member

ATR_COL = FEATURE_NAMES.index("atr_pct")
# timestamps of warm-up history run through the model at start: enough for the online
# weights' 200 most recent outcomes and the predictions still awaiting theirs (one symbol
# decides about 0.7 outcomes a candle, each within the barrier horizon)
REBUILD_CANDLES = 400
# candles of history per symbol a live start hands the ensemble before its first live candle:
# a full window (``history_rows(lookback)``, 632 at lookback 32) plus the REBUILD_CANDLES it
# replays; ``EnsembleSignalSource`` refuses a lookback it does not cover
LIVE_WARMUP = 1200


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


@dataclass
class Ready:
    """A candle ready to score: its features [L, F] (None: its member outputs are known
    already, in ``outs`` and ``regime``) and its ATR in price units."""

    candle: Candle
    atr: float
    x: np.ndarray | None = None
    outs: np.ndarray | None = None
    regime: int = -1
    cal: Calibrated | None = None  # the outputs calibrated already (one row)


class EnsembleSignalSource:
    """The engine's ``SignalSource`` for the model ensemble.

    Each symbol keeps its last ``history_rows(lookback)`` candles: enough that the features of
    a window equal those of the whole history, which training used, to ~1e-9
    (``models.features.SETTLE``). The symbols of one timestamp go through the features in one
    batched pass and through the members in one forward."""

    name = "ensemble"

    def __init__(
        self, ensemble: Ensemble, timeframe: str, executor: Executor | None = None, threads: int = 1
    ) -> None:
        self.ens = ensemble
        self.model_version = ensemble.id
        self.timeframe = timeframe
        self.step = timeframe_ms(timeframe)
        self.executor = executor or torch_thread()  # the process's one torch thread
        # one intra-op thread: small batches run faster without OpenMP contention with the
        # event loop's thread (raise it for many symbols). Set where the scoring runs: the
        # count is each OS thread's own (models/device.py)
        set_threads(self.executor, threads)
        self.keep = history_rows(ensemble.lookback)
        self.need = WARMUP + ensemble.lookback  # candles before the first window is scored
        if self.keep + REBUILD_CANDLES > LIVE_WARMUP:
            raise RegistryError(
                f"ensemble {ensemble.id}: lookback {ensemble.lookback} needs "
                f"{self.keep + REBUILD_CANDLES} candles of warm-up; a start hands over "
                f"{LIVE_WARMUP} (models/ensemble.py LIVE_WARMUP)")
        self._hist: dict[str, History] = {}
        self._online = OnlineWeights(len(ensemble.names))
        # per symbol: (open time, upper barrier, lower barrier, member p) awaiting an outcome
        self._pending: dict[str, list[tuple[int, float, float, np.ndarray]]] = {}
        self._replay: list[list[Candle]] = []  # warm-up timestamps to run through the model

    def on_gap(self, gap: Gap) -> None:
        return None  # the features mark the gap and do not reach across it

    def _append(self, c: Candle) -> None:
        h = self._hist.get(c.symbol)
        if h is None:
            h = self._hist[c.symbol] = History(self.keep)
        h.append(c)

    def _windows(self, candles: Sequence[Candle]) -> dict[str, Ready]:
        """Features of every listed symbol whose history is long enough, in one pass per
        history length (after the first ``keep`` candles, one pass)."""
        lookback = self.ens.lookback
        rows = lookback + NORM_WINDOW - 1  # raw rows the last ``lookback`` z-scores read
        by_len: dict[int, list[Candle]] = {}
        for c in candles:
            n = len(self._hist[c.symbol])
            if n >= self.need:
                by_len.setdefault(n, []).append(c)
        out: dict[str, Ready] = {}
        for group in by_len.values():
            wins = [self._hist[c.symbol].window() for c in group]
            ohlcv = np.stack([w[0] for w in wins])
            raw = raw_features(ohlcv, np.stack([w[1] for w in wins]), self.step, tail=rows)
            feats = normalise(raw, last=lookback).astype(np.float32)
            nan_rows = np.isnan(feats).reshape(len(group), -1).sum(axis=1)
            for i, c in enumerate(group):
                if nan_rows[i] == 0:
                    out[c.symbol] = Ready(c, float(raw[i, -1, ATR_COL] * ohlcv[i, -1, 3]),
                                          feats[i])
        return out

    def _learn(self, c: Candle) -> None:
        """Outcomes this candle decides re-weight the members (online, by log-loss): a touch
        of the stop (first, when both are inside the candle) or of the target. A prediction
        whose horizon passes untouched is a timeout and teaches nothing, as in training."""
        waiting = self._pending.get(c.symbol)
        if not waiting:
            return
        keep = []
        for ts, upper, lower, member_p in waiting:
            if c.ts <= ts:
                keep.append((ts, upper, lower, member_p))
            elif c.low <= lower:
                self._online.update(member_p, 0.0)
            elif c.high >= upper:
                self._online.update(member_p, 1.0)
            elif c.ts < ts + self.ens.horizon * self.step:
                keep.append((ts, upper, lower, member_p))
        self._pending[c.symbol] = keep

    def swap(self, model: PromotedModel) -> bool:
        """Score from now on with a newly promoted version (same features, new weights)."""
        if not isinstance(model, Ensemble):
            raise TypeError(f"an ensemble source cannot score with {type(model).__name__}")
        ensemble = model
        self.ens = ensemble
        self.model_version = ensemble.id
        self._online = OnlineWeights(len(ensemble.names))
        self._pending.clear()
        self._replay.clear()
        return True

    @property
    def device(self) -> str:
        return self.ens.device

    def warm(self, candles: Sequence[Candle]) -> None:
        """History before trading starts. The older part only fills the feature buffers; the
        last ``REBUILD_CANDLES`` timestamps are kept to run through the model before the first
        live candle (in the executor, as live would, without signals), so the online weights
        and the predictions awaiting their barrier are those of a run that never stopped: a
        restart does not change the next p."""
        groups: dict[int, list[Candle]] = {}
        for c in candles:
            groups.setdefault(c.ts, []).append(c)
        stamps = sorted(groups)
        cut = max(0, len(stamps) - REBUILD_CANDLES)
        for ts in stamps[:cut]:
            for c in groups[ts]:
                self._append(c)
        self._replay.extend(groups[ts] for ts in stamps[cut:])

    def _take(self, candles: Sequence[Candle]) -> list[Ready]:
        """Buffer each candle, learn what it decides, and return those ready to score."""
        for c in candles:
            self._append(c)
            self._learn(c)
        ready = self._windows(candles)
        return [ready[c.symbol] for c in candles if c.symbol in ready]

    def _score(self, ready: Sequence[Ready], online: np.ndarray) -> list[Prediction]:
        """The members' outputs (one forward for those not known yet), then the combiner."""
        cals = [r.cal for r in ready if r.cal is not None]
        if len(cals) == len(ready):  # computed and calibrated ahead (backtests)
            cal = cals[0] if len(cals) == 1 else Calibrated(
                *(np.concatenate(parts) for parts in zip(*(c.parts() for c in cals),
                                                         strict=True)))
            return self.ens.combined(cal, np.array([r.regime for r in ready]), online)
        todo = [r for r in ready if r.outs is None]
        if todo:
            assert all(r.x is not None for r in todo)
            outs, regime = self.ens.raw(np.stack([r.x for r in todo]))  # type: ignore[misc]
            for i, r in enumerate(todo):
                r.outs, r.regime = outs[i], int(regime[i])
        return self.ens.finish(np.stack([r.outs for r in ready]),  # type: ignore[misc]
                               np.array([r.regime for r in ready]), online)

    def _remember(self, ready: Sequence[Ready], preds: Sequence[Prediction]) -> None:
        for r, p in zip(ready, preds, strict=False):
            if r.atr > 0:
                c = r.candle
                upper, lower = self.ens.barrier.levels(c.close, r.atr)
                self._pending.setdefault(c.symbol, []).append((c.ts, upper, lower, p.member_p))

    def _rebuild(self) -> None:
        """Run the kept history through the model, one timestamp at a time (executor)."""
        while self._replay:
            ready = self._take(self._replay.pop(0))
            if ready:
                self._remember(ready, self._score(ready, self._online.multipliers()))

    async def on_candles(self, candles: Sequence[Candle]) -> list[Signal]:
        loop = asyncio.get_running_loop()
        if self._replay:
            await loop.run_in_executor(self.executor, self._rebuild)
        ready = self._take(candles)
        if not ready:
            return []
        online = self._online.multipliers()
        if all(r.outs is not None for r in ready):  # known already: no forward to wait for
            preds = self._score(ready, online)
        else:
            preds = await loop.run_in_executor(self.executor, self._score, ready, online)
        self._remember(ready, preds)
        names = self.ens.names
        return [
            Signal(
                symbol=r.candle.symbol,
                ts=r.candle.ts,
                p_up=p.p_up,
                expected_return=p.expected_return,
                source=self.name,
                model_version=self.model_version,
                dispersion=p.dispersion,
                regime=p.regime,
                price=r.candle.close,
                atr=r.atr,
                members=tuple(zip(names, p.shown.tolist(), strict=True)),
            )
            for r, p in zip(ready, preds, strict=False)
        ]
