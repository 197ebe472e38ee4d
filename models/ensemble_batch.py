"""Ensemble signals for backtests, computed ahead in large batches.

A backtest knows every candle before it starts, so the expensive part of a decision need not
wait for its candle. For each symbol, from the first candle the source is handed, this source
computes the features of the whole series in one vectorised pass (the same functions as
live) and runs every member over all of its scoreable windows, ``chunk`` windows per
forward. The online re-weighting learns each outcome when its candle arrives and the
combiner uses the multipliers of that moment: with several series candle by candle, as the
outcomes of all symbols come in turn; with one, ahead too (``models/online_ahead.py``), so
that a candle on its script only looks up its signal. The strategy and risk loop is the
engine's own. On the CPU the members' forward
runs in look-ahead processes (``models/ahead_worker.py``) beside the engine, which takes
each chunk's outputs as they arrive; they are calibrated when the run reaches them. So a
backtest with this source takes the decisions the stepwise source would take
(tests/test_ensemble_batch.py holds both to 1e-6 on the signals and to the same orders).

Why the outputs match: a live window keeps ``history_rows(lookback)`` candles, enough that
its features equal the whole series' to ~1e-9 (``models.features.SETTLE``); a window shorter
than that (the first ``keep`` candles) is a prefix of the series, computed the same way.

A candle that is not the next one of its series (a feed that skips, or a symbol the source
was not given) takes that symbol back to the stepwise path, so the source is never wrong,
only slower.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np

from bot.domain import Candle, CandleSeries, PromotedModel, Signal
from models.ahead_worker import AheadWorker
from models.ensemble import Ensemble
from models.ensemble_source import EnsembleSignalSource, History, Ready
from models.online_ahead import OnlineAhead
from models.series_ahead import CPU_CHUNK, SeriesAhead

LOOK_AHEAD = 4096  # timestamps whose cross-sections are computed together
class BatchedEnsembleSignalSource(EnsembleSignalSource):
    """The ensemble's signal source for backtests over known ``series``."""

    def __init__(self, ensemble: Ensemble, timeframe: str, series: Sequence[CandleSeries],
                 chunk: int | None = None, executor: Executor | None = None,
                 threads: int | None = None, worker: AheadWorker | None = None,
                 early: SeriesAhead | None = None) -> None:
        # the look-ahead's large batches: every core where it runs here (BTC/USDT 1h, 43k
        # windows: 6.3 s on 2 threads, 10.9 s on 1); one beside the look-ahead processes,
        # which have the other cores
        cores = os.cpu_count() or 1
        super().__init__(ensemble, timeframe, executor,
                         threads or (1 if worker is not None else cores))
        # the look-ahead processes (models/ahead_worker.py), loaded with this ensemble: the
        # members' forward runs there, beside the engine; None: here, on the torch thread
        self.worker = worker
        # windows per forward: on a GPU large enough to fill it
        self.chunk = chunk or (CPU_CHUNK if ensemble.device == "cpu" else 4096)
        # the one series' look-ahead handed to the processes before they were ready
        # (``look_ahead_early``), adopted where the run starts where it was computed from
        self._early = early
        self._series = {s.symbol: s.candles for s in series}
        self._stamps = {s.symbol: np.array([c.ts for c in s.candles], dtype=np.int64)
                        for s in series}
        self._ahead: dict[str, SeriesAhead | None] = {}
        # cross-sectional members (the GNN) see the symbols of one timestamp together: their
        # outputs are computed ahead for the symbols expected at each timestamp
        self._expected: dict[int, frozenset[str]] = {}
        self._computed: frozenset[str] = frozenset()  # the symbols the last look ahead knew
        self._known_set: frozenset[str] | None = None  # ``_known()``, None: to compute
        # one series: at each of its timestamps its symbol is the whole cross-section, so
        # the cross-sectional members run with the others, in the look-ahead processes,
        # instead of here (a candle of another symbol beside it takes the joint forward)
        self._single = len(self._series) == 1
        # the one series' combiner computed ahead too (``models/online_ahead.py``): None not
        # started, True on it, False left it for good (the source's state then brought to
        # the candle it had reached, and candle by candle from there)
        self._direct: bool | None = None
        self._on_script: SeriesAhead | None = None  # its series while on that path

    def swap(self, model: PromotedModel) -> bool:
        """A new version scores from here on: what was computed ahead was the old one's."""
        self._leave()
        swapped = super().swap(model)
        self.worker = None  # it holds the old version: the new one computes here
        for ahead in self._ahead.values():
            if ahead is not None:
                ahead.row, ahead.cal = None, None
        self._known_set = None
        self._expected.clear()
        self._computed = frozenset()
        return swapped

    def _open(self, c: Candle) -> SeriesAhead | None:
        """Where ``c`` sits in its series (None: not one of the given series' candles)."""
        candles = self._series.get(c.symbol)
        if candles is None:
            return None
        i = int(np.searchsorted(self._stamps[c.symbol], c.ts))
        if i >= len(candles) or not (candles[i] is c or candles[i] == c):
            return None
        early, self._early = self._early, None
        if early is not None:
            # theirs where it is this start's and they loaded this ensemble; not where they
            # failed or are late (the run then computes here, as it would have)
            if (early.candles is candles and early.first == i and self._single
                    and early.lookback == self.ens.lookback and self.chunk == CPU_CHUNK
                    and early.job.outs.shape[1] == len(self.ens.names)
                    and self.worker is not None and self.worker.is_ready()
                    and early.job.error is None):
                return early
            if self.worker is not None:  # the rest of it is not computed
                self.worker.cancel(early.job)
        return SeriesAhead(candles, i)

    def _seen(self, c: Candle) -> SeriesAhead | None:
        if c.symbol not in self._ahead:
            self._ahead[c.symbol] = self._open(c)
            self._known_set = None
        return self._ahead[c.symbol]

    def _append(self, c: Candle) -> None:
        super()._append(c)
        ahead = self._seen(c)
        if ahead is not None:
            if ahead.follows(c):
                ahead.pos += 1
            else:  # off the script: this symbol is scored stepwise from here on
                self._ahead[c.symbol] = None
                self._known_set = None

    def _prepare(self, candles: Sequence[Candle]) -> None:
        """Compute ahead for every symbol of ``candles`` that has no outputs yet (executor)."""
        for c in candles:
            ahead = self._seen(c)
            if ahead is not None and ahead.row is None:
                ahead.compute(self.ens, self.step, self.need, self.chunk, self.worker,
                              self._single)
                self._known_set = None

    def _windows(self, candles: Sequence[Candle]) -> dict[str, Ready]:
        out: dict[str, Ready] = {}
        stepwise = []
        for c in candles:
            ahead = self._ahead.get(c.symbol)
            if ahead is None:
                stepwise.append(c)
                continue
            if ahead.row is None:  # the warm-up replay reaches here first (in the executor)
                ahead.compute(self.ens, self.step, self.need, self.chunk, self.worker,
                              self._single)
                self._known_set = None
            ready = ahead.ready(c, self.ens)
            if ready is not None:
                out[c.symbol] = ready
        if not self.ens.cross or not out:
            if stepwise:
                out.update(super()._windows(stepwise))
            return out
        alone = super()._windows(stepwise) if stepwise else {}
        if self._single and not alone:  # the one series alone: its columns are in
            return out
        stamps = {c.ts for c in candles}
        ts = candles[0].ts
        # the cross-section computed ahead (``on_candles`` looks ahead in the executor first;
        # the warm-up replay, itself in the executor, computes it here when missing)
        if not alone and len(stamps) == 1 and self._cross_set(ts) == frozenset(out):
            return out
        # not the cross-section computed ahead (a symbol left the script on this candle; the
        # next one looks ahead again): one forward over this one, as stepwise
        for sym, r in out.items():
            ahead = self._ahead[sym]
            assert ahead is not None
            out[sym] = ahead.todo(r)
        out.update(alone)
        return out

    def _known(self) -> frozenset[str]:
        """The symbols with outputs computed ahead (kept until one is added, computed, or
        leaves the script: every candle asks)."""
        if self._known_set is None:
            self._known_set = frozenset(s for s, a in self._ahead.items()
                                        if a is not None and a.row is not None)
        return self._known_set

    def _cross_set(self, ts: int) -> frozenset[str] | None:
        if ts not in self._expected:
            self._cross_ahead(ts)
        return self._expected.get(ts)

    def _look_ahead(self, candles: Sequence[Candle]) -> None:
        """(executor) What the candles need computed ahead: their symbols' series, then the
        cross-sectional members from their timestamp, where not computed yet or computed for
        another set of symbols (one joined or left). All torch work stays on the executor's
        thread, off the event loop (models/device.py)."""
        self._prepare(candles)
        if self._cross_stale(candles[0].ts):
            self._cross_ahead(candles[0].ts)

    def _cross_stale(self, ts: int) -> bool:
        """The cross-sectional members have no outputs computed ahead for ``ts``, or have them
        for another set of symbols than the series known now."""
        return (bool(self.ens.cross) and not self._single
                and (ts not in self._expected or self._known() != self._computed))

    def _cross_ahead(self, ts0: int) -> None:
        """The cross-sectional members for the next ``LOOK_AHEAD`` timestamps from ``ts0``: at
        each, the symbols whose series have a scored window there form one cross-section; runs of
        timestamps with the same symbols go through the members as panels [T, N, L, F]."""
        aheads = {s: a for s, a in sorted(self._ahead.items())
                  if a is not None and a.row is not None}
        self._computed = frozenset(aheads)
        names = list(aheads)
        stamps = np.unique(np.concatenate([a.ts[a.ts >= ts0] for a in aheads.values()]))
        stamps = stamps[:LOOK_AHEAD]
        # each symbol's candle at each timestamp (its index in the series), -1: none scored
        local = np.full((len(names), len(stamps)), -1)
        for k, a in enumerate(aheads.values()):
            assert a.row is not None
            i = np.minimum(np.searchsorted(a.ts, stamps), len(a.ts) - 1)
            hit = (a.ts[i] == stamps) & (a.row[i] >= 0)
            local[k, hit] = i[hit]
        sets, which = np.unique((local >= 0).T, axis=0, return_inverse=True)
        cross = np.array(self.ens.cross)
        filled: dict[str, list[np.ndarray]] = {}
        for g, members in enumerate(sets):
            syms = [n for n, on in zip(names, members, strict=True) if on]
            at = np.flatnonzero(which.ravel() == g)  # the timestamps with these symbols
            self._expected.update(dict.fromkeys(stamps[at].tolist(), frozenset(syms)))
            if not syms:
                continue
            idx = local[np.flatnonzero(members)][:, at]  # [N, T]
            per = max(1, self.chunk // len(syms))
            for lo in range(0, len(at), per):
                part = idx[:, lo : lo + per]
                panel = np.stack([aheads[s].windows(part[j]) for j, s in enumerate(syms)],
                                 axis=1)  # [T, N, L, F]
                outs = self.ens.raw_panel(panel)  # [T, N, C, 3]
                for j, s in enumerate(syms):
                    a = aheads[s]
                    assert a.row is not None
                    rows = a.row[part[j]]
                    a.outs[rows[:, None], cross[None, :]] = outs[:, j]
                    filled.setdefault(s, []).append(rows)
        for s, done in filled.items():
            aheads[s].crossed_in(self.ens, np.concatenate(done))

    async def on_candles(self, candles: Sequence[Candle]) -> list[Signal]:
        ahead = self._on_script  # the one series' next candle, its combiner computed ahead
        if ahead is not None and len(candles) == 1 and ahead.follows(candles[0]):
            r = ahead.next_row()
            if r >= 0 and not ahead.arrived(r):  # on its way from the look-ahead processes
                await asyncio.get_running_loop().run_in_executor(None, ahead.job.wait, r)
            return self._signal(candles[0], ahead)
        loop = asyncio.get_running_loop()
        if self._replay:  # the warm-up replay first: it hands over the older candles
            await loop.run_in_executor(self.executor, self._rebuild)
        if any(c.symbol not in self._ahead
               or ((a := self._ahead[c.symbol]) is not None and a.row is None)
               for c in candles) or self._cross_stale(candles[0].ts):
            await loop.run_in_executor(self.executor, self._look_ahead, candles)
        for c in candles:  # outputs still on their way from the look-ahead processes
            ahead = self._ahead.get(c.symbol)
            if ahead is not None and ahead.row is not None and ahead.follows(c):
                r = ahead.next_row()
                if r >= 0 and not ahead.arrived(r):
                    await loop.run_in_executor(None, ahead.job.wait, r)
        if self._direct is not False:
            signals = self._take_direct(candles)
            if signals is not None:
                return signals
            self._leave()
        return await super().on_candles(candles)

    def _take_direct(self, candles: Sequence[Candle]) -> list[Signal] | None:
        """The first candle of the path that computes the combiner ahead too (``OnlineAhead``)
        for the one series: from there all that is left here, candle by candle, is its
        signal (``on_candles``). None: not such a candle, or the source has state that path
        did not make."""
        if len(candles) != 1 or not self._single or self._direct is not None:
            return None
        c = candles[0]
        ahead = self._ahead.get(c.symbol)
        if (ahead is None or ahead.row is None or ahead.cal is None or not ahead.follows(c)
                or self._replay or self._online.count or any(self._pending.values())):
            return None
        ahead.direct = OnlineAhead(ahead.ts, ahead.high, ahead.low, ahead.close, ahead.atr,
                                   ahead.row, self.ens.barrier, self.step, self.ens.stacker,
                                   len(self.ens.names), start=ahead.pos + 1 - ahead.first)
        self._direct, self._on_script = True, ahead
        return self._signal(c, ahead)

    def _signal(self, c: Candle, ahead: SeriesAhead) -> list[Signal]:
        """``c``, the next candle of ``ahead``'s series (its outputs in), taken: its signal,
        none where its window is not scored."""
        direct, cal = ahead.direct, ahead.cal
        assert direct is not None and cal is not None
        ahead.pos += 1
        i = ahead.pos - ahead.first
        r = direct.rows[i]
        if r < 0:
            return []
        if r >= direct.p_done:
            if not ahead.calibrate_to(self.ens, r):  # never for the one series (its
                raise AssertionError("cross-sectional columns missing")  # come with it)
            direct.p(ahead.calibrated, cal.member_p, cal.logits)
        p, ret, disp, regime, members = direct.fields(r, cal, ahead.regime,
                                                      self.ens.regime_of, self.ens.names)
        return [Signal(symbol=c.symbol, ts=c.ts, p_up=p, expected_return=ret, source=self.name,
                       model_version=self.model_version, dispersion=disp, regime=regime,
                       price=c.close, atr=direct.atr[i], members=members)]

    def _leave(self) -> None:
        """Leave the combiner computed ahead for good, with the state the candle-by-candle
        path would have: the series' candle buffer, the online weights and the predictions
        waiting for an outcome, as of the last candle taken."""
        if self._direct is True:
            for sym, ahead in self._ahead.items():
                if ahead is None or ahead.direct is None or ahead.cal is None:
                    continue
                j = ahead.pos - ahead.first
                hist = self._hist[sym] = History(self.keep)
                for c in ahead.candles[max(ahead.first, ahead.pos + 1 - self.keep)
                                       : ahead.pos + 1]:
                    hist.append(c)
                self._online = ahead.direct.online(j, ahead.cal.member_p)
                self._pending[sym] = ahead.direct.pending(j, ahead.cal.member_p)
                ahead.direct = None
        self._direct, self._on_script = False, None
