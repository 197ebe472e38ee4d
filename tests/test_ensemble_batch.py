"""Backtests compute the ensemble's member outputs ahead, a series at a time
(models/ensemble_batch.py). That must not change a decision: the batched source and the
stepwise one (what paper and live run) give the same signals to 1e-6 and, through the whole
engine, the same orders."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.app import backtest
from bot.config import load_settings
from bot.domain import Candle, CandleSeries, Signal
from bot.feeds.files import load_candle_file
from models.ensemble import Ensemble
from models.ensemble_batch import BatchedEnsembleSignalSource
from models.ensemble_source import EnsembleSignalSource
from models.features import FEATURE_NAMES
from models.labels import BarrierSpec
from models.members import REGISTRY, MemberConfig
from models.meta import LogitMoments
from strategies.ensemble import EnsembleStrategy
from tests.conftest import fetch, shared_file
from tests.helpers import candles

BAR = BarrierSpec(1.0, 1.5, 12)
H = 3_600_000


def _ensemble() -> Ensemble:
    torch.manual_seed(0)
    # the GNN sees each timestamp's symbols together: the batched source must keep that
    names = ("gru", "lstm", "tcn", "vae", "gnn")
    members = [REGISTRY[n](MemberConfig(len(FEATURE_NAMES), 8, 8)).eval() for n in names]
    # the bias puts p around the break-even, so entries and exits both happen
    return Ensemble("t", members, [1.0, 0.8, 1.2, 1.0, 0.9],
                    np.array([0.6, 0.3, 0.4, 0.2, 0.5]), -0.35, 8, BAR,
                    LogitMoments(np.zeros(5), np.eye(5) * 0.01))


def _series(symbol: str, cs: list[Candle]) -> CandleSeries:
    return CandleSeries(Path(f"{symbol.replace('/', '_')}.csv"), symbol, "1h", cs, [], False)


def _timestamps(series: list[CandleSeries]) -> list[list[Candle]]:
    by: dict[int, list[Candle]] = {}
    for s in series:
        for c in s.candles:
            by.setdefault(c.ts, []).append(c)
    return [by[t] for t in sorted(by)]


async def _signals(src: EnsembleSignalSource, steps: list[list[Candle]],
                   warm: int) -> dict[tuple[str, int], Signal]:
    src.warm([c for g in steps[:warm] for c in g])
    out: dict[tuple[str, int], Signal] = {}
    for g in steps[warm:]:
        for s in await src.on_candles(g):
            out[(s.symbol, s.ts)] = s
    return out


def _assert_same(a: dict[tuple[str, int], Signal], b: dict[tuple[str, int], Signal]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        assert abs(x.p_up - y.p_up) < 1e-6, k
        assert abs(x.expected_return - y.expected_return) < 1e-6, k
        assert abs(x.dispersion - y.dispersion) < 1e-6, k
        assert abs(x.atr - y.atr) <= 1e-9 * x.price, k
        assert (x.regime, x.price) == (y.regime, y.price), k
        # each member's p rides along (the console shows them): same names, same values
        assert len(x.members) >= 2 and [n for n, _ in x.members] == [n for n, _ in y.members]
        pairs = zip(x.members, y.members, strict=True)
        assert max(abs(p - q) for (_, p), (_, q) in pairs) < 2e-6, k


def test_batched_and_stepwise_sources_give_the_same_signals() -> None:
    """Three symbols: one with an hour missing, one listed 400 hours after the others
    (the cross-section grows); warm-up handed over at start, then 1,300 timestamps, past
    the first full window (so both the prefix and the sliding case count)."""
    a = candles("AAA/USDT", 1800, "1h", seed=31)
    b = [c for c in candles("BBB/USDT", 1800, "1h", seed=32) if c.ts != a[900].ts]
    late = candles("CCC/USDT", 1800, "1h", seed=37)[400:]
    series = [_series("AAA/USDT", a), _series("BBB/USDT", b), _series("CCC/USDT", late)]
    steps = _timestamps(series)
    ens = _ensemble()
    calls: list[int] = []
    raw = ens.raw

    def counted(x: np.ndarray, cross: bool = True) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(x))
        return raw(x, cross)

    raw_rows = ens.raw_rows

    def counted_rows(rows: np.ndarray, ends: np.ndarray,
                     alone: bool = False) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(ends))  # the look-ahead: windows ending at these rows
        return raw_rows(rows, ends, alone)

    ens.raw = counted  # type: ignore[method-assign]
    ens.raw_rows = counted_rows  # type: ignore[method-assign]
    stepwise = asyncio.run(_signals(EnsembleSignalSource(ens, "1h"), steps, 500))
    n_stepwise = len(calls)
    calls.clear()
    batched = asyncio.run(_signals(BatchedEnsembleSignalSource(ens, "1h", series, chunk=512),
                                   steps, 500))
    assert len(stepwise) > 2000  # the first two score most of the 1,300 timestamps
    assert len({k for k in stepwise if k[0] == "CCC/USDT"}) > 400
    _assert_same(stepwise, batched)
    # one forward per timestamp stepwise; batched, a few of up to 512 windows per symbol
    # (CCC joining the GNN's cross-section makes it look ahead again, not fall back)
    assert n_stepwise > 1000 and max(calls) == 512 and len(calls) <= 10


def test_a_candle_off_the_series_falls_back_to_the_stepwise_path() -> None:
    """The feed hands over a candle the series does not have (or skips one): that symbol is
    scored stepwise from there on, and the signals are still the stepwise source's."""
    a = candles("AAA/USDT", 1000, "1h", seed=33)
    b = candles("BBB/USDT", 1000, "1h", seed=34)
    series = [_series("AAA/USDT", a), _series("BBB/USDT", b)]
    fed = a[:700] + [replace(a[700], close=a[700].close * 1.01,
                             high=max(a[700].high, a[700].close * 1.01))] + a[701:]
    steps = [[x, y] for x, y in zip(fed, b, strict=True)]
    ens = _ensemble()
    stepwise = asyncio.run(_signals(EnsembleSignalSource(ens, "1h"), steps, 0))
    src = BatchedEnsembleSignalSource(ens, "1h", series)
    batched = asyncio.run(_signals(src, steps, 0))
    assert src._ahead["AAA/USDT"] is None  # it noticed; BBB is still computed ahead
    assert src._ahead["BBB/USDT"] is not None
    assert len(stepwise) > 1000
    _assert_same(stepwise, batched)


async def _run(url: str, series: list[CandleSeries], source: EnsembleSignalSource
               ) -> tuple[list[dict], list[dict]]:
    settings = load_settings(overrides={"database": {"url": url}, "timeframe": "1h"},
                             environ={})
    strategy = EnsembleStrategy(BAR.k_stop, BAR.k_target, BAR.horizon, H, cost=0.002)
    out = await backtest(settings, series, None, None, None, stack=(source, strategy))
    assert out.status == "completed"
    signals = await fetch(url, "SELECT symbol, ts, p_up, price FROM signals WHERE run_id=$1 "
                               "ORDER BY ts, symbol", out.run_id)
    orders = await fetch(url, "SELECT symbol, side, order_type, quantity, limit_price, "
                              "stop_price, status, filled_qty, avg_fill_price, fees, "
                              "reduce_only, signal_ts, reason FROM orders WHERE run_id=$1 "
                              # orders of one candle share created_at (the simulated clock):
                              # an entry's stop and its first trail can; break ties on content
                              # so the comparison does not hang on PostgreSQL's sort of equals
                              "ORDER BY created_at, symbol, side, order_type, stop_price, "
                              "limit_price, quantity, status", out.run_id)
    return signals, orders


async def _engine_parity(url: str, series: list[CandleSeries]) -> None:
    ens = _ensemble()
    s1, o1 = await _run(url, series, EnsembleSignalSource(ens, "1h"))
    batched = BatchedEnsembleSignalSource(ens, "1h", series)
    s2, o2 = await _run(url, series, batched)
    # one series: its combiner computed ahead too (models/online_ahead.py), to the end
    assert batched._direct is (True if len(series) == 1 else None)
    assert len(s1) == len(s2) > 500
    for x, y in zip(s1, s2, strict=True):
        assert (x["symbol"], x["ts"], x["price"]) == (y["symbol"], y["ts"], y["price"])
        assert abs(x["p_up"] - y["p_up"]) < 1e-6
    entries = [o for o in o1 if o["side"] == "buy" and o["order_type"] == "market"]
    assert len(entries) >= 5  # the comparison is not of two empty lists
    assert o1 == o2


async def test_a_backtest_places_the_same_orders_batched_or_stepwise(pg_url: str) -> None:
    series = [_series("AAA/USDT", candles("AAA/USDT", 1400, "1h", seed=35))]
    await _engine_parity(pg_url, series)


async def test_the_same_orders_on_2000_real_candles(pg_url: str) -> None:
    """The acceptance case: 2,000 real BTC/USDT 1h candles (skipped without ../shared)."""
    path = shared_file("binance-spot-1h", "BTC_USDT-1h.json")
    full = load_candle_file(path, "1h", "BTC/USDT")
    cs = full.candles[-2000:]
    gaps = [g for g in full.gaps if g.next_ts >= cs[0].ts]
    series = [CandleSeries(path, "BTC/USDT", "1h", cs, gaps, False)]
    await _engine_parity(pg_url, series)


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_the_chunk_size_does_not_change_the_outputs(chunk: int) -> None:
    a = candles("AAA/USDT", 800, "1h", seed=36)
    series = [_series("AAA/USDT", a)]
    ens = _ensemble()
    ref = asyncio.run(_signals(BatchedEnsembleSignalSource(ens, "1h", series, chunk=64),
                               [[c] for c in a], 0))
    got = asyncio.run(_signals(BatchedEnsembleSignalSource(ens, "1h", series, chunk=chunk),
                               [[c] for c in a], 0))
    assert len(ref) > 100
    _assert_same(ref, got)


def test_a_lookback_the_start_cannot_warm_is_refused() -> None:
    """A start hands over LIVE_WARMUP candles: an ensemble whose window plus the replay needs
    more could not rebuild its state after a restart, so it is refused, saying why."""
    from models.ensemble_source import LIVE_WARMUP
    from models.registry import RegistryError

    torch.manual_seed(0)
    gru = REGISTRY["gru"](MemberConfig(len(FEATURE_NAMES), 300, 8)).eval()
    long = Ensemble("long", [gru], [1.0], np.array([1.0]), 0.0, 300, BAR)
    with pytest.raises(RegistryError, match=f"a start hands over {LIVE_WARMUP}"):
        EnsembleSignalSource(long, "1h")
    EnsembleSignalSource(_ensemble(), "1h")  # lookback 8 fits


def test_a_new_version_mid_backtest_is_not_served_from_the_old_ones_outputs() -> None:
    """A promotion swaps the model between two candles: from then on the batched source
    scores with the new version, as the stepwise one does."""
    a = candles("AAA/USDT", 1000, "1h", seed=38)
    b = candles("BBB/USDT", 1000, "1h", seed=39)
    series = [_series("AAA/USDT", a), _series("BBB/USDT", b)]
    steps = [[x, y] for x, y in zip(a, b, strict=True)]
    old = _ensemble()
    torch.manual_seed(1)
    names = ("gru", "lstm", "tcn", "vae", "gnn")
    members = [REGISTRY[n](MemberConfig(len(FEATURE_NAMES), 8, 8)).eval() for n in names]
    new = Ensemble("t2", members, [1.0] * 5, np.array([0.5, 0.4, 0.3, 0.2, 0.6]), -0.3, 8,
                   BAR, LogitMoments(np.zeros(5), np.eye(5) * 0.01))

    async def run(src: EnsembleSignalSource) -> dict[tuple[str, int], Signal]:
        out: dict[tuple[str, int], Signal] = {}
        for i, g in enumerate(steps):
            if i == 700:
                assert src.swap(new)
            for s in await src.on_candles(g):
                out[(s.symbol, s.ts)] = s
        return out

    stepwise = asyncio.run(run(EnsembleSignalSource(old, "1h")))
    batched = asyncio.run(run(BatchedEnsembleSignalSource(old, "1h", series)))
    after = [k for k in stepwise if k[1] >= a[700].ts]
    assert len(after) > 400 and {stepwise[k].model_version for k in after} == {"t2"}
    _assert_same(stepwise, batched)


def test_every_forward_of_a_batched_run_is_on_the_torch_thread_off_the_loop() -> None:
    """The members' look-ahead, the cross-sectional GNN's panels (which ran on the event
    loop's thread before) and the stepwise fallbacks all run on the process's torch thread
    (models/device.py): a symbol joins the cross-section, and another leaves the script."""
    import threading

    from models.device import torch_thread

    a = candles("AAA/USDT", 1300, "1h", seed=41)
    late = candles("CCC/USDT", 1300, "1h", seed=42)[300:]
    fed_a = a[:900] + [replace(a[900], close=a[900].close * 1.01,
                               high=max(a[900].high, a[900].close * 1.01))] + a[901:]
    series = [_series("AAA/USDT", a), _series("CCC/USDT", late)]
    steps = _timestamps([_series("AAA/USDT", fed_a), _series("CCC/USDT", late)])
    ens = _ensemble()
    seen: dict[str, set[str]] = {}
    for name in ("raw", "raw_rows", "raw_panel"):
        inner = getattr(ens, name)

        def recording(*args: object, _inner: object = inner, _name: str = name) -> object:
            seen.setdefault(_name, set()).add(threading.current_thread().name)
            return _inner(*args)  # type: ignore[operator]

        setattr(ens, name, recording)
    src = BatchedEnsembleSignalSource(ens, "1h", series, chunk=256)
    out = asyncio.run(_signals(src, steps, 200))
    assert len(out) > 1500
    torch_name = torch_thread().submit(lambda: threading.current_thread().name).result()
    assert set(seen) == {"raw", "raw_rows", "raw_panel"}, seen  # every path was taken
    assert all(names == {torch_name} for names in seen.values()), seen
