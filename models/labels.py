"""Triple-barrier labels: the question Kelly asks, as the ensemble's training target.

For the candle at row t, with close ``C`` and ATR ``A`` (price units, the same ATR the risk
manager places its stop with), the upper barrier is ``C + k_target * A`` and the lower one
``C - k_stop * A``. The candles t+1 .. t+H are scanned in order:

- ``+1`` when the upper barrier is touched first (a high at or above it);
- ``-1`` when the lower barrier is touched first (a low at or below it);
- ``0`` when neither is touched within H candles: a *timeout*. Timeouts carry no direction
  and are excluded from the classification loss and from every probability metric, so the
  ensemble's p is P(target first | one of the barriers is touched within H). The ensemble
  strategy closes a position that reaches the time limit, so a timeout is a small result
  either way, not a win or a loss in R.

Touches are judged on highs and lows. When both barriers fall inside one candle the order is
unknowable from OHLC, and the stop is counted first (the same worst case the paper broker
and the risk manager's stop use). A candle that opens beyond a barrier (a gap through it)
touches it, since its high or low includes its open.

A row is unlabelled (``valid`` False) when its ATR is undefined, when fewer than H candles
follow it, or when the series has a hole (missing candles) inside its horizon: the outcome
across an exchange outage is not observed.

Pure: arrays in, arrays out. Row t's label uses rows t+1 .. t+H only, which is why windows
are purged and embargoed by ``lookback + horizon`` between train, validation and test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class BarrierSpec:
    """The bet a model is trained to price. It must equal the risk settings it trades with."""

    k_stop: float
    k_target: float
    horizon: int  # candles

    def __post_init__(self) -> None:
        if not (self.k_stop > 0 and self.k_target > 0):
            raise ValueError(f"barriers must be positive ATR multiples, got k_stop="
                             f"{self.k_stop}, k_target={self.k_target}")
        if self.horizon < 1:
            raise ValueError(f"the barrier horizon must be at least 1 candle, got {self.horizon}")

    def to_dict(self) -> dict[str, float | int]:
        return {"k_stop": float(self.k_stop), "k_target": float(self.k_target),
                "horizon": int(self.horizon)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BarrierSpec:
        return cls(float(d["k_stop"]), float(d["k_target"]), int(d["horizon"]))

    def levels(self, close: Any, atr: Any) -> tuple[Any, Any]:
        """(upper, lower) barriers from a close and an ATR in price units (floats or arrays):
        the one definition training labels and the live re-weighting share."""
        return close + self.k_target * atr, close - self.k_stop * atr

    def describe(self) -> str:
        return (f"target {self.k_target:g} ATR / stop {self.k_stop:g} ATR within "
                f"{self.horizon} candles")


@dataclass(frozen=True)
class Barriers:
    label: np.ndarray  # [T] int8: +1 target first, -1 stop first, 0 timeout
    valid: np.ndarray  # [T] bool: the outcome was observed (see the module docstring)
    exit_offset: np.ndarray  # [T] int16: candles until the touch (H for a timeout)

    @property
    def decided(self) -> np.ndarray:
        """Rows with a direction: observed and not a timeout."""
        return self.valid & (self.label != 0)

    @property
    def up(self) -> np.ndarray:
        return (self.label > 0).astype(np.float32)


def outcome_shares(label: np.ndarray) -> dict[str, float]:
    """Shares of target-first, stop-first and timeout outcomes among observed labels."""
    n = max(1, len(label))
    return {"rows": int(len(label)), "target_first": float((label > 0).sum() / n),
            "stop_first": float((label < 0).sum() / n), "timeout": float((label == 0).sum() / n)}


def triple_barrier(high: np.ndarray, low: np.ndarray, close: np.ndarray, atr: np.ndarray,
                   spec: BarrierSpec, ts: np.ndarray | None = None,
                   step_ms: int | None = None) -> Barriers:
    """Labels for every row; see the module docstring. ``atr`` is in price units. With
    ``ts`` and ``step_ms``, rows whose horizon spans a hole in the series are unlabelled."""
    n = len(close)
    h = spec.horizon
    upper, lower = spec.levels(close, atr)
    label = np.zeros(n, dtype=np.int8)
    offset = np.full(n, h, dtype=np.int16)
    open_ = np.ones(n, dtype=bool)  # still waiting for a touch
    rows = np.arange(n)
    for k in range(1, h + 1):
        fut = rows + k
        inside = fut < n
        f = np.where(inside, fut, 0)
        stop = open_ & inside & (low[f] <= lower)
        target = open_ & inside & (high[f] >= upper) & ~stop  # both in one candle: stop first
        label[stop], label[target] = -1, 1
        offset[stop | target] = k
        open_ &= ~(stop | target)
    # rows without H candles after them stay unlabelled even when already decided: keeping
    # only the quick outcomes near the end of a series would bias the sample
    valid = np.isfinite(atr) & (atr > 0) & (rows + h < n)
    if ts is not None and step_ms is not None and n > 1:
        hole = np.zeros(n, dtype=np.int64)
        hole[1:] = (np.diff(ts) > step_ms).astype(np.int64)
        csum = np.concatenate(([0], np.cumsum(hole)))
        end = np.minimum(rows + offset, n - 1)  # holes up to the deciding candle matter
        valid &= (csum[end + 1] - csum[rows + 1]) == 0
    label[~valid] = 0
    return Barriers(label, valid, offset)


def barrier_spec_of(manifest: dict[str, object]) -> BarrierSpec | None:
    """The barriers an ensemble manifest was trained for (None: trained before barriers)."""
    raw = manifest.get("barrier")
    return BarrierSpec.from_dict(raw) if isinstance(raw, dict) else None


def barrier_from(risk: Any) -> BarrierSpec:
    """The bet the risk settings place (``k_stop``, ``k_target``, ``barrier_horizon``): what
    a model must be trained for."""
    return BarrierSpec(risk.k_stop, risk.k_target, risk.barrier_horizon)
