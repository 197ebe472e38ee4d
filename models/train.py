"""Walk-forward training of the ensemble: every member predicts purged walk-forward
out-of-fold parts from models that never saw them, the combiner (average, L2 stacking or the
best member) is the one with the lowest out-of-fold log-loss (``models/oof.py``), and the final
members train on all the history before the test part, with early stopping and temperature on
its last validation rows; metrics on the untouched test part.

Seeds are fixed and CPU runs are deterministic; on CUDA the forward passes run under bf16
autocast.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from models.calibrate import Temperature, report, sigmoid
from models.dataset import (
    Parts,
    SymbolData,
    evenly,
    panel,
    reference_timeline,
    split_by_time,
    window_times,
)
from models.features import FEATURE_NAMES
from models.labels import BarrierSpec, outcome_shares
from models.members import REGISTRY, Member, MemberConfig
from models.members.gnn import CrossAssetGNN
from models.members.ppo import PPOAgent
from models.members.vae import VAERegime
from models.meta import LogitMoments, replay_online, stacked_logit
from models.oof import Choice, OutOfFold, choose_combiner, out_of_fold
from models.windows import Split, holdout, make_windows


@dataclass(frozen=True)
class TrainConfig:
    lookback: int = 32
    # the triple barrier the direction label is (models/labels.py); `stackbot train` and
    # `stackbot evaluate` take all three from the risk settings, so a model prices the bet
    # the risk manager places
    horizon: int = 24
    k_stop: float = 2.0
    k_target: float = 3.0
    cost: float = 0.002  # round-trip cost: the PPO member's fee
    hidden: int = 32
    epochs: int = 4
    patience: int = 1
    batch: int = 256
    lr: float = 2e-3
    # the preset's size, in candles (rows) and windows, never in calendar time, so a change
    # of timeframe alone does not change what training costs
    train_rows: int = 8_760  # the shortest training span: the first evaluation fold's
    val_rows: int = 2_160  # calibration, stacking and early stopping
    test_rows: int = 2_160  # held out by `stackbot train` (`stackbot evaluate` tiles the file)
    max_train_samples: int = 24_000  # training windows per member (evenly subsampled above)
    ppo_passes: int = 2
    oof_folds: int = 3  # purged walk-forward folds whose out-of-fold parts choose the combiner
    seed: int = 7
    device: str = "cpu"


PRESETS: dict[str, TrainConfig] = {
    # a smoke test of the whole pipeline in seconds (tests, demos); not for trading
    "tiny": TrainConfig(lookback=16, hidden=8, epochs=1, patience=0, train_rows=1500,
                        val_rows=300, test_rows=300, max_train_samples=2000, ppo_passes=1,
                        oof_folds=2),
    "quick": TrainConfig(),
    "full": TrainConfig(hidden=64, epochs=30, patience=5, max_train_samples=200_000,
                        ppo_passes=10, lookback=48, oof_folds=4),
}


def barrier_of(cfg: TrainConfig) -> BarrierSpec:
    return BarrierSpec(cfg.k_stop, cfg.k_target, cfg.horizon)


def with_barrier(cfg: TrainConfig, barrier: BarrierSpec) -> TrainConfig:
    return replace(cfg, k_stop=barrier.k_stop, k_target=barrier.k_target,
                   horizon=barrier.horizon)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class MemberResult:
    name: str
    model: Member
    temperature: float
    val_logits: np.ndarray
    test_logits: np.ndarray
    metrics: dict[str, Any]
    epoch_seconds: list[float] = field(default_factory=list)


@dataclass
class TrainResult:
    config: TrainConfig
    parts: Parts
    members: list[MemberResult]
    meta_weights: np.ndarray
    meta_bias: float
    meta_metrics: dict[str, Any]
    symbols: list[str]
    moments: LogitMoments | None = None  # the members' out-of-fold logits (models/meta.py)
    oof: OutOfFold | None = None
    choice: Choice | None = None


@dataclass
class Stack:
    """The chosen combiner applied to the final members' test logits, re-weighted online as
    live, keeping the out-of-fold logit's moments; and every candidate's test p beside it."""

    weights: np.ndarray
    bias: float
    moments: LogitMoments
    p_oof: np.ndarray  # the deployed combiner's p on every out-of-fold window, as scored
    p_test: np.ndarray  # the final p on every test window: what reaches Kelly
    p_test_static: np.ndarray  # the combiner alone (no online re-weighting)
    p_test_reweighted: np.ndarray  # re-weighted without the moment constraint
    candidates_test: dict[str, np.ndarray]  # every combiner candidate's test p (re-weighted)


def stack_members(data: Sequence[SymbolData], parts: Parts, results: Sequence[MemberResult],
                  choice: Choice) -> Stack:
    test_l = np.stack([r.test_logits / r.temperature for r in results], axis=1)
    c = choice.deployed
    tt, tr = window_times(data, parts, "test")
    y = parts.test.up

    def live(w: np.ndarray, b: float, moments: LogitMoments | None) -> np.ndarray:
        return sigmoid(replay_online(test_l, tt, tr, y, w, b, moments))

    cands = {n: live(k.weights, k.bias, choice.moments) for n, k in choice.candidates.items()}
    return Stack(c.weights, c.bias, choice.moments, choice.oof_p[c.name], cands[c.name],
                 sigmoid(stacked_logit(test_l, c.weights, c.bias)),
                 live(c.weights, c.bias, None), cands)


def _batches(n: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return [perm[i:i + size] for i in range(0, n, size)]


@torch.no_grad()
def predict(model: Member, x: np.ndarray, device: str, batch: int = 4096) -> np.ndarray:
    model.eval()
    outs = []
    for i in range(0, len(x), batch):
        xb = torch.as_tensor(x[i:i + batch], device=device)
        with torch.autocast("cuda", torch.bfloat16, enabled=device.startswith("cuda")):
            outs.append(model(xb).float().cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, 3), np.float32)


def fit_supervised(model: Member, tr: dict[str, np.ndarray], va: dict[str, np.ndarray],
                   cfg: TrainConfig, tick: Callable[[], None] | None = None) -> list[float]:
    """Adam with early stopping on validation loss; restores the best epoch's weights."""
    dev = cfg.device
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    T = {k: torch.as_tensor(v, device=dev) for k, v in tr.items()}
    V = {k: torch.as_tensor(v, device=dev) for k, v in va.items()}
    def epoch() -> None:
        for idx in _batches(len(T["x"]), cfg.batch, gen):
            with torch.autocast("cuda", torch.bfloat16, enabled=dev.startswith("cuda")):
                loss = model.training_loss(T["x"][idx], T["up"][idx], T["ret"][idx],
                                           T["labeled"][idx])
            _step(model, opt, loss)

    return _early_stopping(model, epoch, lambda: float(model.training_loss(
        V["x"], V["up"], V["ret"], V["labeled"])), cfg, tick)


def _step(model: Member, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def _early_stopping(model: Member, epoch: Callable[[], None], val_loss: Callable[[], float],
                    cfg: TrainConfig, tick: Callable[[], None] | None) -> list[float]:
    """Run epochs until validation loss stops improving for ``patience`` epochs; restore the
    best epoch's weights. Returns seconds per epoch."""
    best, best_state, bad, times = float("inf"), None, 0, []
    for _ in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        epoch()
        times.append(time.perf_counter() - t0)
        model.eval()
        with torch.no_grad():
            vl = val_loss()
        if tick:
            tick()
        if vl < best - 1e-5:
            best, bad = vl, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad > cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return times


def _arrays(w: Any, idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
    sel = slice(None) if idx is None else idx
    return {"x": w.x[sel], "up": w.up[sel], "ret": w.ret[sel], "labeled": w.labeled[sel]}


def train_member(name: str, data: Sequence[SymbolData], parts: Parts, cfg: TrainConfig,
                 tick: Callable[[], None] | None = None) -> MemberResult:
    seed_everything(cfg.seed)
    mcfg = MemberConfig(len(FEATURE_NAMES), cfg.lookback, cfg.hidden)
    model = REGISTRY[name](mcfg)
    times: list[float] = []
    if isinstance(model, CrossAssetGNN):
        (a, b), (c, d) = parts.split_ts["train"], parts.split_ts["val"]
        train_panel = panel(data, a, b, cfg.lookback, cfg.horizon,
                            max(1, cfg.max_train_samples // len(data)))[:4]
        val_panel = panel(data, c, d, cfg.lookback, cfg.horizon)[:4]
        model.to(cfg.device)
        times = _fit_gnn(model, train_panel, val_panel, cfg, tick)
    elif name == "ppo":
        t0 = time.perf_counter()
        assert isinstance(model, PPOAgent)
        for sd in data:
            a, b = parts.split_ts["train"]
            # the most recent rows: the policy learns from chronological episodes, so it
            # cannot be subsampled evenly; the cap keeps its cost the preset's
            cap = max(1, cfg.max_train_samples // len(data))
            rows = np.nonzero((sd.ts >= a) & (sd.ts <= b))[0][-cap:]
            w = make_windows(sd.features, sd.close, cfg.lookback, 1, rows=rows)
            # a gap in the windows (a missing candle, a NaN feature) ends an episode
            starts = np.r_[True, np.diff(w.t) > 1] if len(w.t) else np.zeros(0, bool)
            model.fit(w.x, w.ret, fee=cfg.cost / 2, passes=cfg.ppo_passes, seed=cfg.seed,
                      starts=starts)
        times = [(time.perf_counter() - t0) / max(1, cfg.ppo_passes)]
        if tick:
            tick()
    else:
        idx = evenly(np.arange(len(parts.train)), cfg.max_train_samples)
        times = fit_supervised(model, _arrays(parts.train, idx), _arrays(parts.val), cfg, tick)
        if isinstance(model, VAERegime):
            model.fit_regimes(torch.as_tensor(parts.train.x[idx], device=cfg.device),
                              parts.train.up[idx], parts.train.ret[idx], cfg.seed)
    model.cpu()
    cfg_cpu = replace(cfg, device="cpu")
    val = member_logits(model, name, data, parts, "val", cfg_cpu)
    test = member_logits(model, name, data, parts, "test", cfg_cpu)
    lab_v, lab_t = parts.val.labeled, parts.test.labeled
    temp = Temperature.fit(val[lab_v], parts.val.up[lab_v]) if lab_v.any() else Temperature()
    metrics = {
        "val_raw": report(sigmoid(val[lab_v]), parts.val.up[lab_v]),
        "val_calibrated": report(temp(val[lab_v]), parts.val.up[lab_v]),
        "test_raw": report(sigmoid(test[lab_t]), parts.test.up[lab_t]),
        "test_calibrated": report(temp(test[lab_t]), parts.test.up[lab_t]),
        "temperature": temp.t,
        "seconds_per_epoch": float(np.mean(times)) if times else 0.0,
        "epochs": len(times),
    }
    return MemberResult(name, model, temp.t, val, test, metrics, times)


def member_logits(model: Member, name: str, data: Sequence[SymbolData], parts: Parts,
                   part: str, cfg: TrainConfig) -> np.ndarray:
    """Logits for every window of ``part`` in the parts' order (symbol by symbol)."""
    w = getattr(parts, part)  # not probing: "train", "val" or "test" by name
    if not isinstance(model, CrossAssetGNN):
        return predict(model, w.x, cfg.device)[:, 0]
    # the graph member sees all symbols of a timestamp together; a window whose timestamp is
    # not shared by every symbol is answered by a one-node graph
    out = predict(model, w.x, cfg.device, batch=1)[:, 0]
    a, b = parts.split_ts[part]
    X, _, _, _, ts = panel(data, a, b, cfg.lookback, cfg.horizon)
    if len(ts):
        with torch.no_grad():
            joint = model.forward_panel(torch.as_tensor(X)).numpy()[:, 0].reshape(len(ts), -1)
        offset = 0
        for k, (d, n) in enumerate(zip(data, parts.sizes[part], strict=False)):
            when = d.ts[w.t[offset:offset + n]]
            pos = np.minimum(np.searchsorted(ts, when), len(ts) - 1)
            hit = ts[pos] == when
            out[offset:offset + n][hit] = joint[pos[hit], k]
            offset += n
    return out


def _fit_gnn(model: CrossAssetGNN, train: tuple[np.ndarray, ...], val: tuple[np.ndarray, ...],
             cfg: TrainConfig, tick: Callable[[], None] | None) -> list[float]:
    """``train`` and ``val`` are panels: windows, returns, target-first, has-a-direction
    (the train panel already capped at the preset's windows by ``panel(max_rows=...)``)."""
    from models.members.base import direction_loss, return_nll

    dev = cfg.device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    X, R, U, D = (torch.as_tensor(a, device=dev) for a in train)
    XV, RV, UV, DV = (torch.as_tensor(a, device=dev) for a in val)

    def loss_of(x: torch.Tensor, r: torch.Tensor, u: torch.Tensor,
                lab: torch.Tensor) -> torch.Tensor:
        out = model.forward_panel(x)
        return direction_loss(out, u.reshape(-1), lab.reshape(-1)) + return_nll(out, r.reshape(-1))

    def epoch() -> None:
        for idx in _batches(len(X), max(1, cfg.batch // X.shape[1]), gen):
            _step(model, opt, loss_of(X[idx], R[idx], U[idx], D[idx]))

    return _early_stopping(model, epoch, lambda: float(loss_of(XV, RV, UV, DV)) if len(XV)
                           else 0.0, cfg, tick)


def member_oof(data: Sequence[SymbolData], split: Split, ref: np.ndarray, cfg: TrainConfig,
               members: Sequence[str],
               on_member: Callable[[str, str], None] | None = None,
               tick: Callable[[], None] | None = None,
               baselines: Callable[[Parts], dict[str, np.ndarray]] | None = None,
               ) -> OutOfFold:
    """The members' out-of-fold predictions inside ``split``'s history (``models/oof.py``)."""
    def train(name: str, parts: Parts) -> tuple[np.ndarray, float]:
        label = f"{name} oof"
        if on_member:
            on_member(label, "start")
        r = train_member(name, data, parts, cfg, tick)
        if on_member:
            on_member(label, "done")
        return r.test_logits, r.temperature

    return out_of_fold(data, split, ref, cfg.lookback, cfg.horizon, cfg.max_train_samples,
                       members, cfg.oof_folds, cfg.val_rows, train, baselines)


def train_ensemble(data: Sequence[SymbolData], cfg: TrainConfig, members: Sequence[str],
                   on_member: Callable[[str, str], None] | None = None,
                   tick: Callable[[], None] | None = None) -> TrainResult:
    ref = reference_timeline(data)
    embargo = cfg.lookback + cfg.horizon
    split = holdout(len(ref), cfg.train_rows, cfg.val_rows, cfg.test_rows, embargo)
    if split is None:
        raise ValueError(f"not enough history: {len(ref)} candles, need "
                         f"{cfg.train_rows + cfg.val_rows + cfg.test_rows + 2 * embargo}")
    oof = member_oof(data, split, ref, cfg, members, on_member, tick)
    choice = choose_combiner(oof)
    parts = split_by_time(data, split, ref, cfg.lookback, cfg.horizon, cfg.max_train_samples)
    results = []
    for name in members:
        if on_member:
            on_member(name, "start")
        results.append(train_member(name, data, parts, cfg, tick))
        if on_member:
            on_member(name, "done")
    lab_t = parts.test.labeled
    st = stack_members(data, parts, results, choice)
    lab_o = oof.labeled
    meta = {"oof": report(st.p_oof[lab_o], oof.up[lab_o]),
            "test": report(st.p_test[lab_t], parts.test.up[lab_t]),
            "test_static_stacker": report(st.p_test_static[lab_t], parts.test.up[lab_t]),
            "combiner": choice.deployed.name,
            "combiners": {n: {"oof_log_loss": choice.oof_log_loss[n],
                              "test": report(p[lab_t], parts.test.up[lab_t])}
                          for n, p in st.candidates_test.items()},
            "members_oof": {n: report(oof.member_p(n)[lab_o], oof.up[lab_o])
                            for n in oof.members},
            "weights": dict(zip([r.name for r in results], map(float, st.weights), strict=False)),
            "bias": st.bias,
            "test_reweighted_unconstrained": report(st.p_test_reweighted[lab_t],
                                                    parts.test.up[lab_t]),
            "barrier": barrier_of(cfg).to_dict(),
            "labels": {k: _outcomes(data, v) for k, v in parts.split_ts.items()}}
    return TrainResult(cfg, parts, results, st.weights, st.bias, meta, [d.symbol for d in data],
                       st.moments, oof, choice)


def _outcomes(data: Sequence[SymbolData], span: tuple[int, int]) -> dict[str, float]:
    """Shares of target-first, stop-first and timeout outcomes in a time range (reported:
    timeouts are excluded from the classification target)."""
    return outcome_shares(np.concatenate([
        d.barriers.label[(d.ts >= span[0]) & (d.ts <= span[1]) & d.barriers.valid]
        for d in data]))


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)
