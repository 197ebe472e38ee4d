"""Signed MQTT commands: verification rules, idempotency by id, replay by nonce."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.bus.signing import Command, Rejection, sign, verify
from bot.control import CommandGate
from bot.domain import Candle, Fill, Position, Side
from bot.ports import ControlRequest
from risk.manager import RiskManager
from risk.settings import RiskSettings

SECRET = "s3cret-for-tests"
NOW = 1_800_000_000_000


def message(action: str = "kill", secret: str = SECRET, **over: Any) -> bytes:
    body = {"id": "c1", "ts": NOW, "nonce": "n1", "operator": "alice", "reason": "why",
            "level": "cancel"}
    body.update(over)
    return json.dumps(sign(action, body, secret)).encode()


def test_good_command_verifies() -> None:
    c = verify("kill", message(), SECRET, NOW + 1000, set())
    assert isinstance(c, Command) and c.level == "cancel" and c.operator == "alice"


@pytest.mark.parametrize("raw,action,reason", [
    (b'{"id": "x"}', "kill", "unsigned command"),
    (message(secret="wrong"), "kill", "bad signature"),
    (message("resume", level=None), "kill", "bad signature"),  # signed for another action
    (message(ts=NOW - 60_000), "kill", "stale"),
    (message(level="nuke"), "kill", "kill needs level"),
    (message(extra="x"), "kill", "unknown field"),
    (b"not json", "kill", "not JSON"),
    (message(), "explode", "unknown action"),
])
def test_bad_commands_are_rejected_with_reason(raw: bytes, action: str, reason: str) -> None:
    r = verify(action, raw, SECRET, NOW, set())
    assert isinstance(r, Rejection) and reason in r.reason


def test_replayed_nonce_is_rejected() -> None:
    assert isinstance(verify("kill", message(), SECRET, NOW, {"n1"}), Rejection)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzzed_payloads_never_verify_or_crash(raw: bytes) -> None:
    assert isinstance(verify("kill", raw, SECRET, NOW, set()), Rejection)


class RecordingEngine:
    """Stands in for the engine's queue: records what would be carried out."""

    def __init__(self) -> None:
        self.requests: list[ControlRequest] = []

    def submit_control(self, request: ControlRequest) -> asyncio.Future[Any]:
        self.requests.append(request)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result({"action": request.action, "state": "HALTED"})
        return fut


async def test_gate_is_idempotent_by_id_and_refuses_replays() -> None:
    engine = RecordingEngine()
    gate = CommandGate(engine, SECRET, set(), {})  # type: ignore[arg-type]
    now = int(time.time() * 1000)
    first = message(ts=now, nonce="a")
    ack1 = await gate.handle("kill", first)
    assert ack1["verdict"] == "accepted"
    ack2 = await gate.handle("kill", message(ts=now, nonce="b"))  # same id, new nonce
    assert ack2["verdict"] == "duplicate" and ack2["result"] == ack1["result"]
    ack3 = await gate.handle("kill", first)  # the very same message again
    assert ack3["verdict"] == "rejected" and ack3["reason"] == "replayed nonce"
    kinds = [r.action for r in engine.requests]
    assert kinds == ["kill", "reject"]  # carried out once; the replay is recorded as refused


async def test_gate_without_secret_refuses_everything() -> None:
    engine = RecordingEngine()
    gate = CommandGate(engine, None, set(), {})  # type: ignore[arg-type]
    ack = await gate.handle("kill", message(ts=int(time.time() * 1000)))
    assert ack["verdict"] == "rejected" and "no mqtt.command_secret" in ack["reason"]


def test_stops_are_watched_by_the_bot_where_the_venue_has_none() -> None:
    m = RiskManager(RiskSettings(k_stop=2, k_target=3), 3_600_000, venue_stops=False)
    m.on_candle(Candle("X/USDT", "1h", 0, 100, 100, 100, 100, 1), 2.0)
    before, after = Position("a", "X/USDT"), Position("a", "X/USDT", D(1), D(100))
    fill = Fill("f", "c", "a", "X/USDT", Side.BUY, D(1), D(100), D(0), "USDT", 0)
    assert m.on_fill(fill, before, after) == []  # nothing placed at the venue
    [exit_] = m.on_candle_protect(Candle("X/USDT", "1h", 3_600_000, 99, 99, 95, 96, 1), after)
    assert exit_.exit_reason is not None and "stop (watched)" in exit_.exit_reason
    venue = RiskManager(RiskSettings(k_stop=2, k_target=3), 3_600_000, venue_stops=True)
    venue.on_candle(Candle("X/USDT", "1h", 0, 100, 100, 100, 100, 1), 2.0)
    [placed] = venue.on_fill(fill, before, after)
    assert placed.stop_price == D("96.0")
