"""The forward pads batches to power-of-two buckets (models/forward.py), the fixed shapes a
CUDA graph needs. On the CPU the same padding runs eager: it must change no real row, and the
module must only ever see bucket shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.ensemble import Ensemble
from models.features import FEATURE_NAMES
from models.forward import BUCKETS, Forward, bucket
from models.labels import BarrierSpec
from models.members import REGISTRY, MemberConfig

F = len(FEATURE_NAMES)


def _ensemble(buckets: bool) -> Ensemble:
    torch.manual_seed(0)
    members = [REGISTRY[n](MemberConfig(F, 8, 8)).eval() for n in sorted(REGISTRY)]
    return Ensemble("b", members, [1.0] * len(members), np.full(len(members), 0.1), 0.0, 8,
                    BarrierSpec(2.0, 3.0, 24), buckets=buckets)


def test_bucket_sizes() -> None:
    assert [bucket(n) for n in (1, 2, 3, 5, 50, 64, 65, 2048)] == [1, 2, 4, 8, 64, 64, 128,
                                                                     2048]
    with pytest.raises(ValueError, match="exceed the largest bucket"):
        bucket(2049)


def test_padding_to_buckets_changes_no_row_and_uses_only_bucket_shapes() -> None:
    """Every member, the VAE's regime and the cross-asset GNN included (its padding rows
    send no messages), batches of 1 to 70 and one past the largest bucket (run whole,
    eager): the padded forward gives the real rows what the unpadded one of the same batch
    gives."""
    plain, padded = _ensemble(False), _ensemble(True)
    assert plain.module.cross  # the GNN is in: padding could leak into it
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2100, 8, F)).astype(np.float32)
    for n in (1, 3, 5, 17, 50, 70, 2100):
        ref, ref_regime = plain.raw(x[:n])
        outs, regime = padded.raw(x[:n])
        assert outs.shape[0] == regime.shape[0] == n
        np.testing.assert_allclose(outs, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(regime, ref_regime)
    assert {s[0] for s in padded.forward.shapes} <= set(BUCKETS) | {2100}
    assert {s[0] for s in plain.forward.shapes} - set(BUCKETS)  # unpadded: any size


def test_without_the_mask_padding_would_change_the_gnn() -> None:
    """The check above can fail: copies of the last window fed as real symbols move the
    GNN's outputs for the real rows."""
    ens = _ensemble(False)
    x = np.random.default_rng(2).normal(size=(5, 8, F)).astype(np.float32)
    ref, _ = ens.raw(x)
    leaky, _ = ens.raw(np.concatenate((x, np.repeat(x[-1:], 3, axis=0))))
    gnn = ens.module.cross[0]
    assert np.abs(leaky[:5, gnn] - ref[:, gnn]).max() > 1e-4


def test_graphs_need_cuda_and_fall_back_to_eager_on_the_cpu() -> None:
    fwd = Forward(torch.nn.Identity(), "cpu", "graphs")
    assert fwd.mode == "eager" and not fwd.buckets  # no padding where nothing is captured
    with pytest.raises(ValueError, match="forward mode"):
        Forward(torch.nn.Identity(), "cpu", "fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_cuda_graph_replay_equals_eager_on_the_gpu() -> None:
    torch.manual_seed(0)
    members = [REGISTRY[n](MemberConfig(F, 8, 8)).eval() for n in sorted(REGISTRY)]
    eager = Ensemble("e", members, [1.0] * len(members), np.full(len(members), 0.1), 0.0, 8,
                     BarrierSpec(2.0, 3.0, 24), device="cuda", buckets=True)
    graphs = Ensemble("g", members, [1.0] * len(members), np.full(len(members), 0.1), 0.0, 8,
                      BarrierSpec(2.0, 3.0, 24), device="cuda", cuda_graphs=True)
    x = np.random.default_rng(1).normal(size=(50, 8, F)).astype(np.float32)
    for n in (1, 50, 3):
        a, ra = eager.raw(x[:n])
        b, rb = graphs.raw(x[:n])
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2)  # bf16 autocast on both
        np.testing.assert_array_equal(ra, rb)
    assert len(graphs.forward._graphs) == 3  # buckets 1, 64 and 4, each captured once
