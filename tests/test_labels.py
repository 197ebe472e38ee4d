"""Triple-barrier labels on hand-made candles (models/labels.py), their causality, and the
barrier check at load: a model trained for other barriers than the risk settings' is refused.

Every candle below is written out by hand; ATR is fixed at 1.0 so the barriers sit at
close + k_target and close - k_stop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.features import FEATURE_NAMES, WARMUP, compute_features, feature_spec_hash
from models.labels import BarrierSpec, triple_barrier
from models.members import REGISTRY, MemberConfig
from models.registry import RegistryError, load_member, save_member

SPEC = BarrierSpec(k_stop=2.0, k_target=3.0, horizon=3)  # from close 100: up 103, down 98


def label(rows: list[tuple[float, float, float]], spec: BarrierSpec = SPEC,
          ts: list[int] | None = None) -> tuple[int, bool, int]:
    """The label of row 0 of (high, low, close) rows, with ATR 1 everywhere."""
    a = np.array(rows, dtype=np.float64)
    atr = np.ones(len(a))
    b = triple_barrier(a[:, 0], a[:, 1], a[:, 2], atr, spec,
                       None if ts is None else np.array(ts), None if ts is None else 1)
    return int(b.label[0]), bool(b.valid[0]), int(b.exit_offset[0])


def test_target_first() -> None:
    # t+1 drifts, t+2 reaches 103.0 exactly (a touch counts), t+3 would hit the stop
    assert label([(100, 100, 100), (101, 99.5, 100.5), (103.0, 100.4, 102), (102, 97, 97.5),
                  (97, 96, 96)]) == (1, True, 2)


def test_stop_first() -> None:
    assert label([(100, 100, 100), (100.5, 98.0, 98.5), (104, 98.5, 103.5), (104, 103, 103),
                  (103, 103, 103)]) == (-1, True, 1)


def test_both_barriers_inside_one_candle_count_the_stop_first() -> None:
    # one wide candle spans 97..104: the order inside it is unknowable from OHLC
    assert label([(100, 100, 100), (104, 97, 101), (101, 100, 100), (100, 100, 100),
                  (100, 100, 100)]) == (-1, True, 1)


def test_timeout_is_zero_and_excluded_from_the_target() -> None:
    rows = [(100, 100, 100), (102.9, 98.1, 101), (102.99, 98.01, 99), (102, 99, 100),
            (110, 90, 100)]  # the fourth candle after would hit both: beyond the horizon
    assert label(rows) == (0, True, 3)
    a = np.array(rows)
    b = triple_barrier(a[:, 0], a[:, 1], a[:, 2], np.ones(len(a)), SPEC)
    assert not b.decided[0]  # a timeout carries no direction: masked out of training


def test_gap_through_a_barrier() -> None:
    # the candle after opens at 95, far through the stop at 98: its low (95) is the fill
    # the stop would get, and it counts as the stop touched; likewise a gap up through 103
    assert label([(100, 100, 100), (96, 95, 95.5), (96, 95, 96), (96, 95, 96),
                  (96, 95, 96)]) == (-1, True, 1)
    assert label([(100, 100, 100), (106, 105, 105.5), (106, 105, 106), (106, 105, 106),
                  (106, 105, 106)]) == (1, True, 1)


def test_missing_candles_inside_the_horizon_leave_the_row_unlabelled() -> None:
    rows = [(100, 100, 100), (101, 99, 100), (101, 99, 100), (103.5, 99, 103), (100, 100, 100)]
    assert label(rows, ts=[0, 1, 2, 3, 4]) == (1, True, 3)
    lab, valid, _ = label(rows, ts=[0, 1, 5, 6, 7])  # two candles missing after t+1
    assert (lab, valid) == (0, False)


def test_rows_without_a_full_horizon_after_them_are_unlabelled() -> None:
    a = np.array([(100, 100, 100)] * 3 + [(110, 90, 100)], dtype=np.float64)
    b = triple_barrier(a[:, 0], a[:, 1], a[:, 2], np.ones(4), SPEC)
    # row 0 has its three candles (the last spans both barriers: the stop); rows 1..3 do not,
    # even where an outcome is already visible
    assert b.valid.tolist() == [True, False, False, False]
    assert b.label.tolist() == [-1, 0, 0, 0]
    b = triple_barrier(a[:, 0], a[:, 1], a[:, 2], np.full(4, np.nan), BarrierSpec(2, 3, 1))
    assert not b.valid.any()  # no ATR, no barrier


def test_barriers_scale_with_atr_and_k() -> None:
    rows = [(100, 100, 100), (102.5, 99.5, 102), (102, 100, 101), (101, 100, 100)]
    a = np.array(rows, dtype=np.float64)
    wide = triple_barrier(a[:, 0], a[:, 1], a[:, 2], np.ones(4), SPEC)
    narrow = triple_barrier(a[:, 0], a[:, 1], a[:, 2], np.full(4, 0.5), SPEC)
    assert wide.label[0] == 0 and narrow.label[0] == 1  # 102.5 is past 100 + 3 * 0.5


def test_labels_use_only_the_next_horizon_candles() -> None:
    """Row t's label depends on rows t+1..t+H only: scrambling anything later or earlier
    (with the ATR fixed) leaves it unchanged."""
    rng = np.random.default_rng(5)
    n = 400
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    high, low = close * 1.004, close * 0.996
    atr = close * 0.01
    spec = BarrierSpec(1.0, 1.5, 6)
    base = triple_barrier(high, low, close, atr, spec)
    t = 200
    h2, l2 = high.copy(), low.copy()
    h2[t + spec.horizon + 1:] *= 1.5
    l2[t + spec.horizon + 1:] *= 0.5
    h2[:t] *= 1.5
    l2[:t] *= 0.5
    moved = triple_barrier(h2, l2, close, atr, spec)
    assert moved.label[t] == base.label[t]
    assert (moved.label != base.label).any()  # the scramble did change other rows


def test_no_look_ahead_in_the_features_the_labels_are_learned_from() -> None:
    """The window a label is paired with ends at t: the features at t are unchanged when the
    candles of the label's horizon (t+1..t+H) change."""
    rng = np.random.default_rng(9)
    n = WARMUP + 80
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    o = np.stack([c, c * 1.003, c * 0.997, c, rng.uniform(1, 5, n)], axis=1)
    ts = np.arange(n, dtype=np.int64) * 3_600_000
    t = n - 10
    f0 = compute_features(o, ts, 3_600_000)
    o2 = o.copy()
    o2[t + 1:, :4] *= 1.3
    f1 = compute_features(o2, ts, 3_600_000)
    np.testing.assert_array_equal(f0[: t + 1], f1[: t + 1])


def test_spec_hash_covers_the_barriers() -> None:
    hashes = {feature_spec_hash(s) for s in (SPEC, BarrierSpec(2.0, 3.0, 4),
                                             BarrierSpec(1.5, 3.0, 3), BarrierSpec(2.0, 2.5, 3))}
    assert len(hashes) == 4
    assert feature_spec_hash(BarrierSpec(2.0, 3.0, 3)) == feature_spec_hash(SPEC)
    with pytest.raises(ValueError, match="horizon"):
        BarrierSpec(2.0, 3.0, 0)


def test_a_member_trained_for_other_barriers_is_refused_at_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = REGISTRY["gru"](MemberConfig(len(FEATURE_NAMES), 8, 8))
    digest = save_member(model, tmp_path / "gru.pt", 1.3, SPEC)
    _, temp = load_member(tmp_path / "gru.pt", digest, SPEC)
    assert temp == pytest.approx(1.3)
    with pytest.raises(RegistryError) as err:
        load_member(tmp_path / "gru.pt", digest, BarrierSpec(1.5, 3.0, 3))
    msg = str(err.value)
    assert "target 3 ATR / stop 2 ATR within 3 candles" in msg
    assert "stop 1.5 ATR" in msg and "stackbot train" in msg
