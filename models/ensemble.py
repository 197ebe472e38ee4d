"""The ensemble at inference: every member over every symbol in one batched call, off the event
loop, on ``cuda`` when present (or as configured) and ``cpu`` otherwise.

``EnsembleModule`` is one ``nn.Module`` that runs all members on a ``[symbols, L, F]`` batch
and stacks their outputs. That is the unit handed to ``torch.compile`` on CUDA.
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
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bot.domain import Candle, Gap, PromotedModel, Regime, Signal, timeframe_ms
from models.calibrate import sigmoid
from models.features import FEATURE_NAMES, WARMUP, normalise, raw_features
from models.labels import BarrierSpec, barrier_spec_of
from models.members import Member
from models.members.vae import VAERegime
from models.meta import LogitMoments, OnlineWeights, combine
from models.registry import RegistryError, barrier_mismatch, load_member, sha256

ATR_COL = FEATURE_NAMES.index("atr_pct")
# timestamps of warm-up history run through the model at start: enough for the online
# weights' 200 most recent outcomes and the predictions still awaiting theirs (one symbol
# decides about 0.7 outcomes a candle, each within the barrier horizon)
REBUILD_CANDLES = 400
# candles of history per symbol a live start hands the ensemble before its first live candle:
# the features' warm-up (about 350) plus the REBUILD_CANDLES it replays
LIVE_WARMUP = 1000


class EnsembleModule(nn.Module):
    """All members in one module: [S, L, F] -> [S, M, 3] plus the regime ids [S] (the VAE's
    regime, ordered 0 = bear .. k-1 = bull; -1 with no VAE or where it is not confident)."""

    def __init__(self, members: Sequence[Member]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.vae_index = next((i for i, m in enumerate(members) if m.name == "vae"), -1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        regime = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        outs = []
        for i, m in enumerate(self.members):
            if i == self.vae_index:
                ids, sure = m.confident_regime(x)  # type: ignore[operator]
                regime = torch.where(sure, ids, regime)
                outs.append(m.regime_stats[ids])  # type: ignore[index]
            else:
                outs.append(m(x))
        return torch.stack(outs, dim=1), regime


@dataclass
class Prediction:
    """One symbol's view from the ensemble."""

    p_up: float  # calibrated P(target before stop within the horizon)
    expected_return: float
    dispersion: float
    regime: Regime
    member_p: np.ndarray  # calibrated P(target first) per member


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
    ) -> None:
        self.id = ensemble_id
        self.names = [m.name for m in members]
        self.temps = np.asarray(temperatures, dtype=np.float64)
        self.meta_w, self.meta_b = np.asarray(meta_weights), float(meta_bias)
        self.moments = moments or LogitMoments(np.zeros(len(members)), np.eye(len(members)))
        self.lookback, self.barrier, self.horizon = lookback, barrier, barrier.horizon
        self.device = device
        self.module = EnsembleModule(members).to(device).eval()
        self._call: Any = self.module
        if compile and device.startswith("cuda"):
            self._call = torch.compile(self.module, mode="reduce-overhead")
        self.forecasters = np.array([m.kind == "supervised" for m in members])

    @classmethod
    def load(
        cls,
        manifest: Path,
        expected_sha256: str | None,
        barrier: BarrierSpec,
        device: str = "cpu",
        compile: bool = False,
    ) -> Ensemble:
        """Load a registered ensemble to trade ``barrier`` (the risk settings' stop, target
        and horizon); one trained for another bet is refused."""
        if expected_sha256 is not None and sha256(manifest) != expected_sha256:
            raise RegistryError(f"{manifest} does not match its registered sha256")
        spec = json.loads(manifest.read_text())
        trained = barrier_spec_of(spec)
        if trained != barrier:
            raise RegistryError(
                barrier_mismatch(
                    f"ensemble {spec.get('ensemble_id')}", spec.get("barrier"), barrier
                )
            )
        members, temps = [], []
        for m in spec["members"]:
            model, temp = load_member(manifest.parent / m["path"], m["sha256"], barrier)
            members.append(model)
            temps.append(temp)
        return cls(
            spec["ensemble_id"],
            members,
            temps,
            np.array(spec["meta_weights"]),
            spec["meta_bias"],
            spec["lookback"],
            barrier,
            LogitMoments.from_dict(spec["logit_moments"]) if spec.get("logit_moments") else None,
            device,
            compile,
        )

    @staticmethod
    def trained_barrier(manifest: Path) -> BarrierSpec | None:
        """The barriers a saved ensemble was trained for (benchmarks load it as it is)."""
        return barrier_spec_of(json.loads(manifest.read_text()))

    @torch.no_grad()
    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bare batched forward: member outputs [S, M, 3] and regimes [S]."""
        xb = torch.as_tensor(x, device=self.device)
        with torch.autocast("cuda", torch.bfloat16, enabled=self.device.startswith("cuda")):
            outs, regime = self._call(xb)
        return outs.float().cpu().numpy(), regime.cpu().numpy()

    def predict(self, x: np.ndarray, online: np.ndarray | None = None) -> list[Prediction]:
        outs, regime = self.raw(x)
        logits = outs[:, :, 0] / self.temps  # calibrated
        member_p = sigmoid(logits)
        p = combine(logits, self.meta_w, self.meta_b, online, self.moments)
        mu = outs[:, :, 1]
        exp_ret = mu[:, self.forecasters].mean(axis=1) if self.forecasters.any() else mu.mean(1)
        disp = member_p.std(axis=1)
        return [
            Prediction(
                float(p[i]),
                float(exp_ret[i]),
                float(disp[i]),
                self.regime_of(int(regime[i])),
                member_p[i],
            )
            for i in range(len(x))
        ]

    def regime_of(self, rid: int) -> Regime:
        """The VAE's regime id as a Regime: its k regimes are ordered by mean return, so the
        first is bear, the last bull, those between neutral; -1 is unknown."""
        if rid < 0 or self.module.vae_index < 0:
            return Regime.UNKNOWN
        vae = self.module.members[self.module.vae_index]
        assert isinstance(vae, VAERegime)
        k = vae.k
        return Regime.BEAR if rid == 0 else Regime.BULL if rid == k - 1 else Regime.NEUTRAL


class EnsembleSignalSource:
    """The engine's ``SignalSource`` for the model ensemble."""

    name = "ensemble"

    def __init__(
        self, ensemble: Ensemble, timeframe: str, executor: Executor | None = None, threads: int = 1
    ) -> None:
        # one intra-op thread: small batches run faster without OpenMP contention with the
        # event loop's thread (raise it for many symbols)
        torch.set_num_threads(threads)
        self.ens = ensemble
        self.model_version = ensemble.id
        self.timeframe = timeframe
        self.step = timeframe_ms(timeframe)
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self.keep = WARMUP + ensemble.lookback + 32
        self._buf: dict[str, deque[Candle]] = {}
        self._online = OnlineWeights(len(ensemble.names))
        # per symbol: (open time, upper barrier, lower barrier, member p) awaiting an outcome
        self._pending: dict[str, list[tuple[int, float, float, np.ndarray]]] = {}
        self._replay: list[list[Candle]] = []  # warm-up timestamps to run through the model

    def on_gap(self, gap: Gap) -> None:
        return None  # the features mark the gap and do not reach across it

    def _window(self, sym: str) -> tuple[np.ndarray, float, float] | None:
        buf = self._buf[sym]
        if len(buf) < WARMUP + self.ens.lookback:
            return None
        ohlcv = np.array([[c.open, c.high, c.low, c.close, c.volume] for c in buf])
        ts = np.array([c.ts for c in buf], dtype=np.int64)
        raw = raw_features(ohlcv, ts, self.step)
        feats = normalise(raw).astype(np.float32)[-self.ens.lookback :]
        if np.isnan(feats).any():
            return None
        atr = float(raw[-1, ATR_COL] * ohlcv[-1, 3])
        return feats, atr, float(ohlcv[-1, 3])

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
                self._buf.setdefault(c.symbol, deque(maxlen=self.keep)).append(c)
        self._replay.extend(groups[ts] for ts in stamps[cut:])

    def _take(self, candles: Sequence[Candle]) -> list[tuple[Candle, np.ndarray, float]]:
        """Buffer each candle, learn what it decides, and return the windows ready to score."""
        ready: list[tuple[Candle, np.ndarray, float]] = []
        for c in candles:
            self._buf.setdefault(c.symbol, deque(maxlen=self.keep)).append(c)
            self._learn(c)
            w = self._window(c.symbol)
            if w is not None:
                ready.append((c, w[0], w[1]))
        return ready

    def _remember(
        self, ready: Sequence[tuple[Candle, np.ndarray, float]], preds: Sequence[Prediction]
    ) -> None:
        for (c, _, atr), p in zip(ready, preds, strict=False):
            if atr > 0:
                upper, lower = self.ens.barrier.levels(c.close, atr)
                self._pending.setdefault(c.symbol, []).append((c.ts, upper, lower, p.member_p))

    def _rebuild(self) -> None:
        """Run the kept history through the model, one timestamp at a time (executor)."""
        while self._replay:
            ready = self._take(self._replay.pop(0))
            if ready:
                preds = self.ens.predict(
                    np.stack([r[1] for r in ready]), self._online.multipliers()
                )
                self._remember(ready, preds)

    async def on_candles(self, candles: Sequence[Candle]) -> list[Signal]:
        loop = asyncio.get_running_loop()
        if self._replay:
            await loop.run_in_executor(self.executor, self._rebuild)
        ready = self._take(candles)
        if not ready:
            return []
        x = np.stack([r[1] for r in ready])
        online = self._online.multipliers()
        preds = await loop.run_in_executor(self.executor, self.ens.predict, x, online)
        self._remember(ready, preds)
        return [
            Signal(
                symbol=c.symbol,
                ts=c.ts,
                p_up=p.p_up,
                expected_return=p.expected_return,
                source=self.name,
                model_version=self.model_version,
                dispersion=p.dispersion,
                regime=p.regime,
                price=c.close,
                atr=atr,
            )
            for (c, _, atr), p in zip(ready, preds, strict=False)
        ]
