"""A restart must not change what the ensemble says: the online re-weighting's memory (recent
log-losses and the predictions awaiting their barrier) is rebuilt at start by running the
warm-up history through the model (models/ensemble_source.py, ``warm``)."""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from bot.domain import Candle
from models.ensemble import Ensemble
from models.ensemble_source import LIVE_WARMUP, REBUILD_CANDLES, EnsembleSignalSource
from models.features import FEATURE_NAMES
from models.labels import BarrierSpec
from models.members import REGISTRY, MemberConfig
from models.meta import LogitMoments
from tests.helpers import candles

SYMBOLS = ("AAA/USDT", "BBB/USDT")


def _ensemble() -> Ensemble:
    torch.manual_seed(0)
    members = [REGISTRY[n](MemberConfig(len(FEATURE_NAMES), 8, 8)).eval()
               for n in ("gru", "lstm", "tcn")]
    # narrow barriers over 6 candles: outcomes come quickly, so the weights move a lot
    return Ensemble("t", members, [1.0, 0.8, 1.2], np.array([0.6, 0.3, 0.4]), -0.1, 8,
                    BarrierSpec(0.5, 0.75, 6),
                    LogitMoments(np.zeros(3), np.eye(3) * 0.01))


def _stream(n: int) -> list[list[Candle]]:
    """Per timestamp, both symbols' candles, in the feed's order."""
    a, b = (candles(s, n, "1h", seed=20 + i) for i, s in enumerate(SYMBOLS))
    return [[x, y] for x, y in zip(a, b, strict=False)]


async def _run(
    src: EnsembleSignalSource, steps: list[list[Candle]]
) -> dict[tuple[str, int], float]:
    out: dict[tuple[str, int], float] = {}
    for group in steps:
        for s in await src.on_candles(group):
            out[(s.symbol, s.ts)] = s.p_up
    return out


def test_a_restart_gives_the_same_p_as_a_run_that_never_stopped() -> None:
    steps = _stream(1500)
    ens = _ensemble()
    start, restart = 400, 1200  # the first run starts at 400 and trades through 1499
    history = [c for g in steps[max(0, start - LIVE_WARMUP) : start] for c in g]

    async def scenario() -> tuple[dict, dict, dict, EnsembleSignalSource]:
        never = EnsembleSignalSource(ens, "1h")
        never.warm(history)
        whole = await _run(never, steps[start:])
        # the restarted process: a new source, warmed with the LIVE_WARMUP candles before the
        # restart (what the feed hands over), then live again
        again = EnsembleSignalSource(ens, "1h")
        again.warm([c for g in steps[restart - LIVE_WARMUP : restart] for c in g])
        after = await _run(again, steps[restart:])
        # the old behaviour, for contrast: buffers filled, no model run over the history
        blank = EnsembleSignalSource(ens, "1h")
        for g in steps[restart - LIVE_WARMUP : restart]:
            for c in g:
                blank._append(c)
        naive = await _run(blank, steps[restart:])
        return whole, after, naive, never

    whole, after, naive, never = asyncio.run(scenario())
    assert never._online.count == 200  # every window is full
    keys = sorted(k for k in after if k[1] >= steps[restart][0].ts)
    assert len(keys) == 2 * (1500 - restart)
    assert [after[k] for k in keys] == [whole[k] for k in keys]  # bit for bit
    # without the rebuild the p differs: the test can fail
    assert max(abs(naive[k] - whole[k]) for k in keys) > 1e-4
    assert LIVE_WARMUP - never.keep >= REBUILD_CANDLES  # the feed's warm-up covers buffers + replay
