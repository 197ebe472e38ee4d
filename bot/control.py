"""Operator control: every kill-switch channel converges here on the engine's one queue, and
from there on the risk state machine.

- the CLI, through the database (``bot.ledger.control``: LISTEN/NOTIFY), needs no broker;
- SIGINT/SIGTERM, with the configured kill level (``risk.kill_on_signal``);
- signed MQTT commands (``bot.bus``), verified here before anything happens.
"""

from __future__ import annotations

import time
from typing import Any

from bot.bus.signing import Command, Rejection, verify
from bot.engine import Engine
from bot.logs import get_logger
from bot.ports import ControlRequest

log = get_logger("control")


class CommandGate:
    """Verifies signed MQTT commands and hands the good ones to the engine."""

    def __init__(self, engine: Engine, secret: str | None, seen_nonces: set[str],
                 acks: dict[str, Any], max_skew_ms: int = 30_000) -> None:
        self.engine = engine
        self.secret = secret
        self.nonces = seen_nonces
        self.acks = acks
        self.max_skew_ms = max_skew_ms

    async def handle(self, action: str, raw: bytes) -> dict[str, Any]:
        now = int(time.time() * 1000)
        if not self.secret:
            verdict: Command | Rejection = Rejection(
                "commands are disabled: no mqtt.command_secret configured", None, None, action)
        else:
            verdict = verify(action, raw, self.secret, now, self.nonces, self.max_skew_ms)
        if isinstance(verdict, Rejection):
            log.warning("command_rejected", action=action, reason=verdict.reason, id=verdict.id)
            await self.engine.submit_control(ControlRequest(
                action="reject", reason=verdict.reason, operator="unverified", channel="mqtt",
                command_id=verdict.id, nonce=verdict.nonce, level=action))
            return {"id": verdict.id, "ok": False, "verdict": "rejected", "action": action,
                    "reason": verdict.reason, "ts": now}
        self.nonces.add(verdict.nonce)
        if verdict.id in self.acks:
            return {**self.acks[verdict.id], "verdict": "duplicate", "ts": now,
                    "reason": "command id already carried out; not repeated"}
        result = await self.engine.submit_control(ControlRequest(
            action=verdict.action, reason=verdict.reason, operator=verdict.operator,
            channel="mqtt", level=verdict.level, command_id=verdict.id, nonce=verdict.nonce))
        ack = {"id": verdict.id, "ok": True, "verdict": "accepted", "action": verdict.action,
               "result": result, "ts": now}
        self.acks[verdict.id] = ack
        return ack


def on_signal(engine: Engine, level: str, signame: str) -> None:
    """SIGINT/SIGTERM: apply the configured kill level (if any), then stop gracefully."""
    if level == "none":
        engine.request_stop()
        return
    fut = engine.submit_control(ControlRequest(action="kill", reason=f"{signame} received",
                                               operator="signal", channel="signal", level=level))
    fut.add_done_callback(lambda _: engine.request_stop())
