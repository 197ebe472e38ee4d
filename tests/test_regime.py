"""The regime is an explicit type (bot.domain.Regime): an ensemble without a VAE member, or
with one that cannot tell which regime a window is in, says UNKNOWN, and UNKNOWN does not
block entries. Only BEAR does."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import torch

from bot.domain import Regime, Side
from models.ensemble import Ensemble
from models.ensemble_source import EnsembleSignalSource
from models.features import FEATURE_NAMES
from models.labels import BarrierSpec
from models.members import REGISTRY, MemberConfig
from models.meta import LogitMoments
from strategies.ensemble import EnsembleStrategy
from tests.helpers import candles

F = len(FEATURE_NAMES)
BAR = BarrierSpec(2.0, 3.0, 24)


class _Flat:
    """A portfolio with nothing held and nothing working."""

    class _Pos:
        quantity = 0
        updated_ts = 0

    def position(self, symbol: str) -> _Pos:
        return self._Pos()

    def working_orders(self, symbol: str) -> list:
        return []


def _members(names: tuple[str, ...]) -> list:
    torch.manual_seed(0)
    return [REGISTRY[n](MemberConfig(F, 8, 8)).eval() for n in names]


def test_an_ensemble_without_the_vae_enters_trades() -> None:
    """No VAE: every signal's regime is UNKNOWN, and the strategy enters on a p above the
    break-even. The same signals marked BEAR enter nothing, so the entries are the regime's
    doing, not an accident of p."""
    names = ("gru", "lstm", "tcn")
    # a strong bias: the stacked p is far above the break-even of 0.4 plus costs
    ens = Ensemble("t", _members(names), [1.0] * 3, np.zeros(3), 2.5, 8, BAR,
                   LogitMoments(np.zeros(3), np.eye(3) * 0.01))
    src = EnsembleSignalSource(ens, "1h")
    bars = candles("AAA/USDT", 600, "1h", seed=4)
    src.warm(bars[:400])  # the history a feed hands over at start

    async def run() -> list:
        out = []
        for c in bars[400:]:
            out += await src.on_candles([c])
        return out

    signals = asyncio.run(run())
    assert len(signals) > 50
    assert {s.regime for s in signals} == {Regime.UNKNOWN}
    strategy = EnsembleStrategy(BAR.k_stop, BAR.k_target, BAR.horizon, 3_600_000, cost=0.002)
    entries = [i for i in (strategy.decide(s, _Flat()) for s in signals) if i is not None]
    assert entries and all(i.side is Side.BUY for i in entries)
    bear = [strategy.decide(replace(s, regime=Regime.BEAR), _Flat()) for s in signals]
    assert all(i is None for i in bear)


def test_the_vae_regime_is_bear_neutral_bull_or_unknown_when_unsure() -> None:
    """The VAE's regimes are ordered by mean return (0 bear .. 2 bull). A window confidently
    nearest the first centroid is BEAR; one halfway between two centroids is UNKNOWN."""
    members = _members(("gru", "vae"))
    vae = members[1]
    ens = Ensemble("t", members, [1.0, 1.0], np.zeros(2), 0.0, 8, BAR)
    x = np.random.default_rng(1).normal(size=(2, 8, F)).astype(np.float32)
    with torch.no_grad():
        mu = vae.encode(torch.as_tensor(x))[0]
        far = torch.full_like(mu[0], 50.0)
        vae.centroids.copy_(torch.stack([mu[0], mu[0] + far, mu[0] - far]))
    assert [p.regime for p in ens.predict(x[:1])] == [Regime.BEAR]
    with torch.no_grad():
        vae.centroids.copy_(torch.stack([mu[0] + far, mu[0], mu[0] - far]))
    assert [p.regime for p in ens.predict(x[:1])] == [Regime.NEUTRAL]
    with torch.no_grad():
        vae.centroids.copy_(torch.stack([mu[0] + far, mu[0] - far, mu[0]]))
    assert [p.regime for p in ens.predict(x[:1])] == [Regime.BULL]
    with torch.no_grad():
        step = torch.full_like(mu[0], 0.5)
        vae.centroids.copy_(torch.stack([mu[0] + step, mu[0] - step, mu[0] + far]))
    assert [p.regime for p in ens.predict(x[:1])] == [Regime.UNKNOWN]
    strategy = EnsembleStrategy(BAR.k_stop, BAR.k_target, BAR.horizon, 3_600_000)
    assert strategy.long.blocked == frozenset({Regime.BEAR})  # longs wait out a bear regime
    assert strategy.short.blocked == frozenset({Regime.BULL})  # shorts a bull one
