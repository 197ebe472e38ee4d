"""A restart cannot reset the risk manager (issue 10, items 1-2), against a real PostgreSQL.

Each test drives a breaker part of the way, commits the manager's memory through the ledger
as the engine does with every unit of work, starts a new manager from ``load_account``, and
finishes the sequence there. Each also runs the same sequence on a manager that starts empty,
which is what a restart used to do, to show the test would catch that.
"""

from __future__ import annotations

import random
import uuid
from decimal import Decimal as D
from typing import Any

import pytest

from bot.domain import (
    Candle,
    OrderIntent,
    PredictionObs,
    RiskState,
    Side,
    TradeClosedObs,
    TradingState,
    UnitOfWork,
)
from risk.breakers import DAY_MS
from risk.manager import RiskManager
from risk.settings import RiskSettings
from tests.test_risk_properties import SPEC, portfolio

H = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC


async def restarted(ledger: Any, risk: RiskManager, cfg: RiskSettings,
                    account: str) -> RiskManager:
    unit = UnitOfWork()
    unit.risk_memory[account] = risk.memory
    unit.risk_state[account] = (risk.machine.current, risk.now)
    await ledger.commit(unit)
    state = await ledger.load_account(account)
    fresh = RiskManager(cfg, H)
    fresh.restore(state.risk_state, state.risk_memory)
    return fresh


def states(transitions: list[Any]) -> list[TradingState]:
    return [t.after for t in transitions]


def acct() -> str:
    return f"restart-{uuid.uuid4().hex[:8]}"


async def test_drawdown_spans_a_restart(ledger: Any) -> None:
    """The issue's script: equity 100 -> 92, restart, -> 84 is a 16% drawdown: HALTED."""
    cfg = RiskSettings(drawdown_limit=0.10, daily_loss_limit=0.5)
    risk, account = RiskManager(cfg, H), acct()
    assert risk.on_equity(T0, D(100)) == [] and risk.on_equity(T0 + H, D(92)) == []
    risk = await restarted(ledger, risk, cfg, account)
    assert states(risk.on_equity(T0 + 2 * H, D(84))) == [TradingState.HALTED]
    assert risk.readings()[0].reading > 0.15
    empty = RiskManager(cfg, H)  # what a restart used to leave
    empty.on_equity(T0 + 2 * H, D(92))
    assert empty.on_equity(T0 + 3 * H, D(84)) == []


async def test_daily_loss_spans_a_restart(ledger: Any) -> None:
    cfg = RiskSettings(daily_loss_limit=0.03, drawdown_limit=0.5)
    risk, account = RiskManager(cfg, H), acct()
    risk.on_equity(T0 + H, D(100))
    risk.on_equity(T0 + 2 * H, D(98))
    risk = await restarted(ledger, risk, cfg, account)
    assert states(risk.on_equity(T0 + 3 * H, D("96.5"))) == [TradingState.REDUCING]
    assert risk.machine.current.reducing_until == T0 + DAY_MS  # until 00:00 UTC
    empty = RiskManager(cfg, H)
    empty.on_equity(T0 + 3 * H, D(98))  # the day "starts" at the restart
    assert empty.on_equity(T0 + 4 * H, D("96.5")) == []


async def test_loss_streak_spans_a_restart(ledger: Any) -> None:
    cfg = RiskSettings(consecutive_losses=4, cooldown_candles=12)
    risk, account = RiskManager(cfg, H), acct()
    for i in range(2):
        risk.observe(TradeClosedObs(T0 + i * H, "BTC/USDT", -5.0), T0 + i * H)
    risk = await restarted(ledger, risk, cfg, account)
    for i in range(2, 4):
        risk.observe(TradeClosedObs(T0 + i * H, "BTC/USDT", -5.0), T0 + i * H)
    assert risk.machine.current.cooldown_until == T0 + 3 * H + 12 * H
    empty = RiskManager(cfg, H)
    for i in range(2, 4):
        empty.observe(TradeClosedObs(T0 + i * H, "BTC/USDT", -5.0), T0 + i * H)
    assert empty.machine.current.cooldown_until is None


async def test_exchange_error_rate_spans_a_restart(ledger: Any) -> None:
    cfg = RiskSettings(max_exchange_error_rate=0.5, exchange_error_window=40)
    risk, account = RiskManager(cfg, H), acct()
    for ok in [True] * 2 + [False] * 5:
        assert risk.on_exchange_call(ok) == []
    risk = await restarted(ledger, risk, cfg, account)
    out = []
    for _ in range(3):
        out += risk.on_exchange_call(False)
    assert states(out) == [TradingState.HALTED]  # 8 of 10 failed
    empty = RiskManager(cfg, H)
    assert all(empty.on_exchange_call(False) == [] for _ in range(3))  # 3 calls: too few


async def test_volatility_window_spans_a_restart(ledger: Any) -> None:
    cfg = RiskSettings(volatility_k=3, volatility_window=200, volatility_hold_candles=24)
    risk, account = RiskManager(cfg, H), acct()
    for i in range(150):
        risk.on_candle(Candle("BTC/USDT", "1h", T0 + i * H, 100, 101, 99, 100, 1), 1.0)
    risk = await restarted(ledger, risk, cfg, account)
    spike = Candle("BTC/USDT", "1h", T0 + 150 * H, 100, 110, 90, 100, 1)
    assert states(risk.on_candle(spike, 5.0)) == [TradingState.REDUCING]
    assert RiskManager(cfg, H).on_candle(spike, 5.0) == []  # an empty window cannot judge


async def test_model_degradation_spans_a_restart(ledger: Any) -> None:
    cfg = RiskSettings(model_baseline_accuracy=0.6, model_accuracy_drop=0.05)
    risk, account = RiskManager(cfg, H), acct()
    for i in range(150):
        risk.observe(PredictionObs(T0 + i, i % 3 == 0), T0 + i)
    risk = await restarted(ledger, risk, cfg, account)
    out = []
    for i in range(150, 200):
        out += risk.observe(PredictionObs(T0 + i, i % 3 == 0), T0 + i)
    assert states(out) == [TradingState.REDUCING]


async def test_a_restored_stale_block_clears_on_the_next_fresh_candle(ledger: Any) -> None:
    cfg = RiskSettings(stale_after_timeframes=2)
    risk, account = RiskManager(cfg, H), acct()
    risk.on_candle(Candle("BTC/USDT", "1h", T0, 100, 101, 99, 100, 1), 1.0)
    risk.on_clock(T0 + 4 * H)
    assert risk.machine.current.blocks == {"stale:BTC/USDT"}
    risk = await restarted(ledger, risk, cfg, account)
    assert risk.machine.current.blocks == {"stale:BTC/USDT"}
    resumed = risk.resume("back", "op", T0 + 4 * H)
    assert resumed.after is TradingState.ACTIVE and "stale:BTC/USDT" in risk.blocks_explained()
    risk.on_candle(Candle("BTC/USDT", "1h", T0 + 5 * H, 100, 101, 99, 100, 1), 1.0)
    assert risk.machine.current.blocks == frozenset()
    # a row written before the memory existed (state only) clears the same way
    old = RiskManager(cfg, H)
    old.restore(RiskState.restore({"state": "ACTIVE", "reason": "x",
                                   "blocks": ["stale:ETH/USDT"]}), None)
    old.on_candle(Candle("ETH/USDT", "1h", T0, 10, 11, 9, 10, 1), 0.1)
    assert old.machine.current.blocks == frozenset()


async def test_decisions_are_the_same_with_restarts_anywhere(ledger: Any) -> None:
    """Two managers see the same random stream of candles, equity, trades, venue calls,
    clock ticks and entry intents; one of them is restarted through the ledger at random
    points. Every transition and every decision must be identical."""
    cfg = RiskSettings(drawdown_limit=0.08, daily_loss_limit=0.03, consecutive_losses=3,
                       cooldown_candles=3, max_exchange_error_rate=0.5,
                       exchange_error_window=20, volatility_window=40, volatility_k=2.5,
                       max_orders=3, max_orders_window_s=4 * 3600)
    approvals = trips = restarts = 0
    for seed in range(4):
        rng = random.Random(seed)
        steady, restarting, account = RiskManager(cfg, H), RiskManager(cfg, H), acct()
        equity, price = 10_000.0, 100.0
        for step in range(160):
            ts = T0 + step * H
            price *= 1 + rng.gauss(0, 0.01)
            atr = abs(rng.gauss(1.0, 0.6 if step % 50 else 4.0))
            equity *= 1 + rng.gauss(-0.002, 0.01)
            candle = Candle("BTC/USDT", "1h", ts, price, price * 1.01, price * 0.99, price, 1)
            events: list[tuple[str, Any]] = [("candle", (candle, atr)), ("equity", (ts, equity))]
            if rng.random() < 0.3:
                events.append(("trade", TradeClosedObs(ts, "BTC/USDT", rng.gauss(-1, 3))))
            events += [("call", rng.random() < 0.7) for _ in range(rng.randrange(3))]
            if rng.random() < 0.5:
                events.append(("intent", rng.uniform(0.4, 0.9)))
            if rng.random() < 0.1:
                events.append(("clock", ts + rng.randrange(4) * H))
            for kind, arg in events:
                results = [_apply(m, kind, arg, price) for m in (steady, restarting)]
                assert results[0] == results[1], (seed, step, kind, results)
                trips += kind != "intent" and bool(results[0])
                approvals += kind == "intent" and results[0][0]
            if rng.random() < 0.15:
                restarting = await restarted(ledger, restarting, cfg, account)
                restarts += 1
            if steady.machine.state is TradingState.HALTED and rng.random() < 0.2:
                for m in (steady, restarting):
                    m.resume("test", "op", ts)
    # not vacuous: entries were approved and refused, breakers fired, restarts happened
    assert approvals > 20 and trips > 5 and restarts > 50, (approvals, trips, restarts)


def _apply(m: RiskManager, kind: str, arg: Any, price: float) -> Any:
    if kind == "candle":
        return [(t.after, t.reason) for t in m.on_candle(*arg)]
    if kind == "equity":
        return [(t.after, t.reason) for t in m.on_equity(arg[0], D(repr(arg[1])))]
    if kind == "trade":
        m.observe(arg, arg.ts)
        return [m.machine.current.cooldown_until]
    if kind == "call":
        return [(t.after, t.reason) for t in m.on_exchange_call(arg)]
    if kind == "clock":
        return [(t.after, t.reason) for t in m.on_clock(arg)]
    intent = OrderIntent("BTC/USDT", Side.BUY, "t", m.now, "v", confidence=arg)
    d = m.review(intent, portfolio(D(10_000), price), SPEC)
    return (d.approved, d.quantity, d.reason)


def test_an_operator_command_latches_from_the_stored_state() -> None:
    """The CLI's kill and resume decide the state from the stored one (risk, pure); the
    ledger only stores what they decide."""
    from risk.state import operator_command

    halted, tr = operator_command(None, "kill", "drill", "ops", "cancel", 1_000)
    assert (tr.before.value, tr.after.value) == ("ACTIVE", "HALTED")
    assert halted["state"] == "HALTED" and halted["kill_level"] == "cancel"
    again, tr2 = operator_command(halted, "kill", "twice", "ops", "flatten", 2_000)
    assert tr2.before.value == "HALTED" and again["kill_level"] == "flatten"
    active, tr3 = operator_command(again, "resume", "drill over", "ops", None, 3_000)
    assert (tr3.before.value, tr3.after.value) == ("HALTED", "ACTIVE")
    assert active["state"] == "ACTIVE"
    with pytest.raises(ValueError, match="unknown control action 'pause'"):
        operator_command(None, "pause", "x", "ops", None, 0)
