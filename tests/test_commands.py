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
from bot.command_gate import CommandGate
from bot.domain import Candle, ControlRequest, ControlResult, Fill, Position, Side
from risk.manager import RiskManager
from risk.settings import RiskSettings

SECRET = "s3cret-for-tests"
NOW = 1_800_000_000_000
INSTANCE, ACCOUNT = "prod-1", "prod-1:live:binance"
HERE = {"instance": INSTANCE, "account": ACCOUNT}


def message(action: str = "kill", secret: str = SECRET, **over: Any) -> bytes:
    body = {"id": "c1", "ts": NOW, "nonce": "n1", "operator": "alice", "reason": "why",
            "level": "cancel", **HERE}
    body.update(over)
    return json.dumps(sign(action, body, secret)).encode()


def test_good_command_verifies() -> None:
    c = verify("kill", message(), SECRET, NOW + 1000, set(), **HERE)
    assert isinstance(c, Command) and c.level == "cancel" and c.operator == "alice"


@pytest.mark.parametrize("raw,action,reason", [
    (b'{"id": "x"}', "kill", "unsigned command"),
    (message(secret="wrong"), "kill", "bad signature"),
    (message("resume", level=None), "kill", "bad signature"),  # signed for another action
    (message(ts=NOW - 60_000), "kill", "stale"),
    (message(level="nuke"), "kill", "kill needs level"),
    (message(extra="x"), "kill", "unknown field"),
    (message(instance="prod-2"), "kill", "signed for instance 'prod-2', not this one"),
    (message(account="prod-1:paper:binance"), "kill", "signed for account"),
    (message(instance=None), "kill", "field 'instance' must be a non-empty string"),
    (b"not json", "kill", "not JSON"),
    (message(), "explode", "unknown action"),
])
def test_bad_commands_are_rejected_with_reason(raw: bytes, action: str, reason: str) -> None:
    r = verify(action, raw, SECRET, NOW, set(), **HERE)
    assert isinstance(r, Rejection) and reason in r.reason


def test_replayed_nonce_is_rejected() -> None:
    assert isinstance(verify("kill", message(), SECRET, NOW, {"n1"}, **HERE), Rejection)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzzed_payloads_never_verify_or_crash(raw: bytes) -> None:
    assert isinstance(verify("kill", raw, SECRET, NOW, set(), **HERE), Rejection)


class RecordingEngine:
    """Stands in for the engine's queue: records what would be carried out."""

    def __init__(self) -> None:
        self.requests: list[ControlRequest] = []

    def submit_control(self, request: ControlRequest) -> asyncio.Future[ControlResult]:
        self.requests.append(request)
        fut: asyncio.Future[ControlResult] = asyncio.get_running_loop().create_future()
        fut.set_result(ControlResult(request.action, state="HALTED"))
        return fut


async def test_gate_is_idempotent_by_id_and_refuses_replays() -> None:
    engine = RecordingEngine()
    gate = CommandGate(engine, SECRET, set(), {}, **HERE)  # type: ignore[arg-type]
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
    gate = CommandGate(engine, None, set(), {}, **HERE)  # type: ignore[arg-type]
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


async def test_a_command_for_one_instance_is_refused_by_another_sharing_the_secret() -> None:
    """Issue 17: two instances share a command secret. A kill signed for instance A is
    carried out by A, and the very same bytes replayed to B within the freshness window are
    refused there, and recorded as refused."""
    now = int(time.time() * 1000)
    a_engine, b_engine = RecordingEngine(), RecordingEngine()
    a = CommandGate(a_engine, SECRET, set(), {}, instance="A", account="A:live:binance")  # type: ignore[arg-type]
    b = CommandGate(b_engine, SECRET, set(), {}, instance="B", account="B:live:binance")  # type: ignore[arg-type]
    raw = message(ts=now, nonce="x1", instance="A", account="A:live:binance")
    assert (await a.handle("kill", raw))["verdict"] == "accepted"
    ack = await b.handle("kill", raw)
    assert ack["verdict"] == "rejected"
    assert "signed for instance 'A', not this one ('B')" in ack["reason"]
    assert [r.action for r in a_engine.requests] == ["kill"]
    assert [r.action for r in b_engine.requests] == ["reject"]  # audited as refused
    # re-signing for B needs the secret: changing the field alone breaks the signature
    forged = json.loads(raw)
    forged["instance"], forged["account"] = "B", "B:live:binance"
    ack2 = await b.handle("kill", json.dumps(forged).encode())
    assert ack2["reason"] == "bad signature"


async def test_a_flood_of_bad_messages_adds_a_few_audit_rows_a_minute() -> None:
    """Anyone who can publish can send garbage. 10,000 unsigned messages within a minute are
    audited as at most 5 rows: the first three one by one, then one summary with the counts
    by reason and the first claimed sender, written when the minute ends."""
    from bot.command_gate import MINUTE_MS, REJECTIONS_AUDITED_PER_MINUTE

    t = [60 * MINUTE_MS * 1000]  # the start of a minute
    engine = RecordingEngine()
    gate = CommandGate(engine, SECRET, set(), {}, clock=lambda: t[0], **HERE)  # type: ignore[arg-type]
    for i in range(10_000):
        t[0] += 5  # 10,000 messages in 50 s
        body = {"id": f"spam{i}", "operator": "mallory"} if i % 2 else {"junk": i}
        ack = await gate.handle("kill", json.dumps(body).encode())
        assert ack["verdict"] == "rejected"  # each sender still gets its answer
    assert len(engine.requests) == REJECTIONS_AUDITED_PER_MINUTE
    t[0] += 20_000  # the next minute: its first message closes the previous one
    await gate.handle("kill", b"{}")
    rows = engine.requests
    assert len(rows) == REJECTIONS_AUDITED_PER_MINUTE + 2
    first_minute = rows[: REJECTIONS_AUDITED_PER_MINUTE + 1]
    assert len(first_minute) <= 5
    summary = first_minute[-1]
    assert summary.action == "reject" and summary.command_id is not None
    assert "9997 more rejected commands" in summary.reason and "unsigned command" in summary.reason
    assert "first claimed sender: operator 'mallory'" in summary.reason


async def test_a_minute_of_rejections_is_summarised_even_if_nothing_follows() -> None:
    from bot.command_gate import REJECTIONS_AUDITED_PER_MINUTE

    now = int(time.time() * 1000)
    engine = RecordingEngine()
    gate = CommandGate(engine, SECRET, set(), {}, clock=lambda: now, **HERE)  # type: ignore[arg-type]
    for _ in range(REJECTIONS_AUDITED_PER_MINUTE + 4):
        await gate.handle("kill", b"{}")
    assert gate._flush is not None  # a timer closes the minute
    await gate.flush()  # what the timer does when the minute ends
    assert len(engine.requests) == REJECTIONS_AUDITED_PER_MINUTE + 1
    assert engine.requests[-1].reason.startswith("4 more rejected commands")


def test_a_control_result_says_only_what_happened() -> None:
    """The typed result keeps the dict form the ledger, the audit and acks always carried."""
    kill = ControlResult("kill", "HALTED", "operator kill", cancelled=2, flattened=1)
    assert kill.as_dict() == {"action": "kill", "cancelled": 2, "flattened": 1,
                              "state": "HALTED", "reason": "operator kill"}
    assert list(kill.as_dict()) == ["action", "cancelled", "flattened", "state", "reason"]
    resume = ControlResult("resume", "ACTIVE", "ok", still_blocked={"reconcile": "agreement"})
    assert resume.as_dict()["still_blocked"] == {"reconcile": "agreement"}
    assert ControlResult("reject", reason="bad signature").as_dict() == {
        "action": "reject", "reason": "bad signature"}
    assert ControlResult("kill", note="already carried out").as_dict() == {
        "action": "kill", "note": "already carried out"}
