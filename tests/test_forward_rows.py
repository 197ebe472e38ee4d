"""The look-ahead's forward over a series (issue 12): each member's per-step part runs once per
candle instead of once per window, and the TFT attends from the last step only. Both must give
what the plain forward over windows gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.ensemble_module import EnsembleModule
from models.features import FEATURE_NAMES
from models.members import REGISTRY, MemberConfig
from models.members.tft import TemporalFusionTransformer

F = len(FEATURE_NAMES)
L = 16


def _members(seed: int = 0) -> list[torch.nn.Module]:
    torch.manual_seed(seed)
    cfg = MemberConfig(F, L, hidden=16)
    return [cls(cfg).eval() for cls in REGISTRY.values()]


def test_the_tfts_last_step_attention_is_the_last_row_of_the_full_causal_attention() -> None:
    """The reference is the full [L, L] attention under the causal mask (the old code's
    formula), whose last row alone reaches the output."""
    torch.manual_seed(1)
    tft = TemporalFusionTransformer(MemberConfig(F, L, hidden=16)).eval()
    a = tft.attn
    x = torch.randn(7, L, 16)
    with torch.no_grad():
        B = x.shape[0]
        q = a.q(x).view(B, L, a.h, a.dk).transpose(1, 2)
        k = a.k(x).view(B, L, a.h, a.dk).transpose(1, 2)
        mask = torch.triu(torch.full((L, L), float("-inf")), diagonal=1)
        w = torch.softmax((q @ k.transpose(-1, -2)) / a.dk ** 0.5 + mask, dim=-1)
        full = a.o((w @ a.v(x).unsqueeze(1)).mean(dim=1))  # [B, L, d]
        out, weights = a(x)
    assert torch.allclose(out, full[:, -1], atol=1e-6)
    assert torch.allclose(weights, w.mean(dim=1)[:, -1], atol=1e-6)
    assert torch.allclose(weights.sum(dim=1), torch.ones(B))
    # and the member's whole forward still equals steps, then windows
    xs = torch.randn(5, L, F)
    with torch.no_grad():
        assert torch.allclose(tft(xs), tft.windows(tft.steps(xs)), atol=0)


def test_forward_rows_equals_the_forward_over_windows_for_every_member() -> None:
    module = EnsembleModule(_members()).eval()
    rows = torch.randn(200, F)
    ends = torch.tensor([L - 1, L, 40, 41, 99, 150, 199])
    windows = torch.stack([rows[e - L + 1:e + 1] for e in ends.tolist()])
    with torch.no_grad():
        want, want_regime = module(windows, None, cross=False)
        got, regime = module.forward_rows(rows, ends, L)
    assert got.shape == want.shape == (len(ends), len(REGISTRY), 3)
    assert torch.equal(regime, want_regime)
    err = (got - want).abs().amax(dim=(0, 2))
    worst = {name: float(e) for name, e in zip(REGISTRY, err, strict=True)}
    assert max(worst.values()) < 1e-5, worst
    # not vacuous: the members' outputs differ from window to window
    spread = want[:, :, 0].std(dim=0)
    fixed = {*module.cross, module.vae_index}  # zeros here; the VAE's regime is compared above
    assert all(float(spread[i]) > 1e-4 for i in range(len(REGISTRY)) if i not in fixed)
    # the TFT really took the per-row path: its per-step part ran on the rows
    tft = next(m for m in module.members if m.name == "tft")
    seen: list[tuple[int, ...]] = []
    hook = tft.var_grns[0].register_forward_hook(
        lambda _m, args, _o: seen.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            module.forward_rows(rows, ends, L)
    finally:
        hook.remove()
    assert seen == [(200, 16)]  # once per row, not [7, L, 16]


def test_alone_each_window_is_its_own_cross_section() -> None:
    """A backtest of one series: the cross-sectional members' columns come with the others,
    each window as the one-symbol cross-section the stepwise forward scores it as."""
    module = EnsembleModule(_members(3)).eval()
    rows = torch.randn(200, F)
    ends = torch.tensor([L - 1, 40, 41, 99, 150, 199])
    with torch.no_grad():
        got, _ = module.forward_rows(rows, ends, L, alone=True)
        plain, _ = module.forward_rows(rows, ends, L)
        each = [module(rows[e - L + 1:e + 1].unsqueeze(0))[0][0] for e in ends.tolist()]
    want = torch.stack(each)
    assert module.cross  # the registry has a cross-sectional member
    assert (got - want).abs().max() < 1e-5
    keep = [i for i in range(len(REGISTRY)) if i not in module.cross]
    assert torch.equal(got[:, keep], plain[:, keep])
    assert not plain[:, module.cross].any() and got[:, module.cross, 0].std() > 1e-4


def test_the_look_ahead_rows_skip_windows_with_missing_features() -> None:
    """Rows with NaN features (warm-up) are in the slice but in no scored window: they must
    not leak into the windows that are scored."""
    module = EnsembleModule(_members(2)).eval()
    rows = torch.randn(80, F)
    rows[:10] = float("nan")
    ends = torch.arange(10 + L - 1, 80)
    with torch.no_grad():
        got, _ = module.forward_rows(rows, ends, L)
        want, _ = module(torch.stack([rows[e - L + 1:e + 1] for e in ends.tolist()]), None,
                         cross=False)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["tft", "transformer"])
def test_training_still_learns_through_the_split_forward(name: str) -> None:
    """Gradients reach every parameter that the forward uses."""
    torch.manual_seed(3)
    m = REGISTRY[name](MemberConfig(F, L, hidden=8)).train()
    x = torch.randn(32, L, F)
    loss = m.training_loss(x, torch.rand(32).round(), torch.randn(32) * 0.01,
                           torch.ones(32, dtype=torch.bool))
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, missing


def test_the_transformers_last_layer_for_the_last_step_equals_torchs_full_encoder() -> None:
    """The reference is torch's own nn.TransformerEncoder over every step (what the member
    ran before), whose last step alone reaches the head."""
    from models.members.base import scaled
    from models.members.transformer import TransformerEncoder

    torch.manual_seed(4)
    m = TransformerEncoder(MemberConfig(F, L, hidden=16)).eval()
    assert m.enc.norm is None and m.enc.layers[-1].norm_first
    x = torch.randn(9, L, F)
    with torch.no_grad():
        y = m.enc(m.inp(x) + m.pos, mask=m.mask, is_causal=True)
        want = scaled(m.out(y[:, -1]))
        assert torch.allclose(m(x), want, atol=1e-5)
        # a window shorter than the lookback (the learned positions' last steps) too
        short = x[:, -5:]
        y = m.enc(m.inp(short) + m.pos[:, -5:], mask=m.mask[:5, :5], is_causal=True)
        assert torch.allclose(m(short), scaled(m.out(y[:, -1])), atol=1e-5)


async def test_the_bot_loads_and_scores_its_ensemble_on_one_torch_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """models/device.py: torch work on two threads made a backtest's look-ahead 2.8x slower on
    2 cores. The composition root loads the ensemble on the thread its source scores on, and
    neither is the event loop's."""
    import threading

    from bot.app import signal_stack
    from bot.config import load_settings
    from bot.domain import ActiveModel
    from models.device import torch_thread
    from models.ensemble import Ensemble
    from models.ensemble_source import EnsembleSignalSource
    from models.labels import BarrierSpec

    loaded_on: list[str] = []

    def fake_load(*_args: object, **_kw: object) -> Ensemble:
        loaded_on.append(threading.current_thread().name)
        members = [REGISTRY[n](MemberConfig(F, L, hidden=8)).eval() for n in ("lstm", "gru")]
        return Ensemble("t", members, [1.0, 1.0], np.zeros(2), 0.0, L, BarrierSpec(2, 3, 24))

    class Ledger:
        async def active_ensemble(self) -> ActiveModel:
            return ActiveModel("t", "/nowhere/ensemble.json", "0" * 64, {})

    monkeypatch.setattr(Ensemble, "load", staticmethod(fake_load))
    settings = load_settings(overrides={"timeframe": "1h", "strategy": {"name": "ensemble"}},
                             environ={})
    source, _ = await signal_stack(settings, Ledger(), 0.002)
    assert isinstance(source, EnsembleSignalSource)
    assert source.executor is torch_thread()
    scored_on = torch_thread().submit(lambda: threading.current_thread().name).result()
    assert loaded_on == [scored_on] and scored_on != threading.current_thread().name


@pytest.mark.parametrize("lookback", [32, 16, 5])
def test_the_tcn_computes_only_the_steps_its_last_output_reads(lookback: int) -> None:
    """At inference the TCN's blocks run at the steps the last one depends on (93 of 320
    step-convolutions at lookback 32); the reference is the plain dilated convolutions over
    every step, which training still runs."""
    from models.members.base import scaled
    from models.members.conv import TCN

    torch.manual_seed(6)
    m = TCN(MemberConfig(F, lookback, hidden=16)).eval()
    x = torch.randn(11, lookback, F)
    with torch.no_grad():
        full = m.blocks(m.inp(x.transpose(1, 2)))
        want = scaled(m.out(full[:, :, -1]))
        got = m(x)
    assert torch.allclose(got, want, atol=1e-6)
    assert want[:, 0].std() > 1e-3  # the windows' outputs differ: not vacuous
    plan = m._plan(lookback, x.device)
    done = sum(len(s.first) + len(s.second) for s in plan)
    assert done < 2 * lookback * len(plan)
    if lookback == 32:
        assert done == 93
    # and training runs the full convolutions (their gradients reach every weight)
    m.train()
    m(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_the_thread_count_reaches_the_thread_that_scores() -> None:
    """torch's thread count is each OS thread's own: the source sets it on its executor's
    thread, where the ensemble was loaded and every decision runs (it had been set on the
    caller's thread, and live decisions ran on every core where one thread was meant)."""
    import torch as t

    from models.device import torch_thread
    from models.ensemble_source import EnsembleSignalSource
    from models.labels import BarrierSpec

    def load() -> object:
        t.ones(256, 256) @ t.ones(256, 256)  # parallel work: the thread's count is now fixed
        members = [REGISTRY[n](MemberConfig(F, L, hidden=8)).eval() for n in ("lstm", "gru")]
        from models.ensemble import Ensemble
        return Ensemble("t", members, [1.0, 1.0], np.zeros(2), 0.0, L, BarrierSpec(2, 3, 24))

    torch_thread().submit(t.set_num_threads, 2).result()
    ens = torch_thread().submit(load).result()
    EnsembleSignalSource(ens, "1h")  # threads=1, the live default
    assert torch_thread().submit(t.get_num_threads).result() == 1
    EnsembleSignalSource(ens, "1h", threads=2)
    assert torch_thread().submit(t.get_num_threads).result() == 2
    EnsembleSignalSource(ens, "1h")
