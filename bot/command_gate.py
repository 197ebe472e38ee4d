"""Operator control: every kill-switch channel converges here on the engine's one queue, and
from there on the risk state machine.

- the CLI, through the database (``bot.ledger.control_requests``: LISTEN/NOTIFY), needs no broker;
- SIGINT/SIGTERM, with the configured kill level (``risk.kill_on_signal``);
- signed MQTT commands (``bot.bus``), verified here before anything happens.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from bot.bus.signing import Command, Rejection, verify
from bot.domain import Channel, ControlRequest, Reject, command_from
from bot.engine import Engine
from bot.logs import get_logger

log = get_logger("control")


# rejected commands audited one by one in a minute; the rest are counted, and the minute's
# counts are audited once when it ends, so a flood of bad messages adds a few rows a minute
REJECTIONS_AUDITED_PER_MINUTE = 3
MINUTE_MS = 60_000


class CommandGate:
    """Verifies signed MQTT commands addressed to this instance and account, and hands the
    good ones to the engine. Anyone who can publish can send garbage, so rejections are
    audited in aggregate: the first ``REJECTIONS_AUDITED_PER_MINUTE`` of each minute one by
    one, then one summary row per minute with the counts by reason and the first claimed
    sender (the unverified operator and id of the first rejected message)."""

    def __init__(self, engine: Engine, secret: str | None, seen_nonces: set[str],
                 acks: dict[str, Any], max_skew_ms: int = 30_000, *, instance: str,
                 account: str, clock: Callable[[], int] | None = None) -> None:
        self.engine = engine
        self.secret = secret
        self.nonces = seen_nonces
        self.acks = acks
        self.max_skew_ms = max_skew_ms
        self.instance, self.account = instance, account
        self.clock = clock or (lambda: int(time.time() * 1000))
        self._minute = -1
        self._audited = 0
        self._counted: dict[str, int] = {}
        self._first: dict[str, Any] = {}
        self._flush: asyncio.TimerHandle | None = None

    async def handle(self, action: str, raw: bytes) -> dict[str, Any]:
        now = self.clock()
        if not self.secret:
            verdict: Command | Rejection = Rejection(
                "commands are disabled: no mqtt.command_secret configured", None, None, action)
        else:
            verdict = verify(action, raw, self.secret, now, self.nonces, self.max_skew_ms,
                             instance=self.instance, account=self.account)
        if isinstance(verdict, Rejection):
            await self._rejected(verdict, action, raw, now)
            return {"id": verdict.id, "ok": False, "verdict": "rejected", "action": action,
                    "reason": verdict.reason, "ts": now}
        self.nonces.add(verdict.nonce)
        if verdict.id in self.acks:
            return {**self.acks[verdict.id], "verdict": "duplicate", "ts": now,
                    "reason": "command id already carried out; not repeated"}
        result = await self.engine.submit_control(ControlRequest(
            command_from(verdict.action, verdict.reason, verdict.level),
            operator=verdict.operator, channel=Channel.MQTT, command_id=verdict.id,
            nonce=verdict.nonce))
        ack = {"id": verdict.id, "ok": True, "verdict": "accepted", "action": verdict.action,
               "result": result.as_dict(), "ts": now}
        self.acks[verdict.id] = ack
        return ack

    async def _rejected(self, verdict: Rejection, action: str, raw: bytes, now: int) -> None:
        log.warning("command_rejected", action=action, reason=verdict.reason, id=verdict.id)
        minute = now // MINUTE_MS
        if minute != self._minute:
            await self.flush()
            self._minute = minute
        if self._audited < REJECTIONS_AUDITED_PER_MINUTE:
            self._audited += 1
            await self.engine.submit_control(ControlRequest(
                Reject(verdict.reason, claimed=action), operator="unverified",
                channel=Channel.MQTT, command_id=verdict.id, nonce=verdict.nonce))
            return
        if not self._counted:
            self._first = {"id": verdict.id, "operator": _claimed_operator(raw),
                           "action": action}
            self._schedule((minute + 1) * MINUTE_MS - now)
        key = verdict.reason[:120]
        if key in self._counted or len(self._counted) < 20:
            self._counted[key] = self._counted.get(key, 0) + 1
        else:
            self._counted["other reasons"] = self._counted.get("other reasons", 0) + 1

    def _schedule(self, delay_ms: int) -> None:
        """Audit this minute's counts when it ends, even if no message comes after it."""
        loop = asyncio.get_running_loop()
        self._flush = loop.call_later(max(0.0, delay_ms / 1000) + 0.5,
                                      lambda: asyncio.ensure_future(self.flush()))

    async def flush(self) -> None:
        """One audited summary of the rejections counted (and not audited) this minute."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        counted, first, minute = self._counted, self._first, self._minute
        self._counted, self._first, self._audited = {}, {}, 0
        if not counted:
            return
        total = sum(counted.values())
        by_reason = "; ".join(f"{n} x {r}" for r, n in sorted(counted.items(),
                                                             key=lambda kv: -kv[1]))
        await self.engine.submit_control(ControlRequest(
            Reject(f"{total} more rejected commands in the minute from "
                   f"{minute * MINUTE_MS} ms: {by_reason}; first claimed sender: operator "
                   f"{first.get('operator')!r}, id {first.get('id')!r}",
                   claimed=first.get("action")),
            operator="unverified", channel=Channel.MQTT, command_id=f"rejections-{minute}"))


def _claimed_operator(raw: bytes) -> str | None:
    """The operator a rejected message claims to be from (unverified, for the record)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    op = data.get("operator") if isinstance(data, dict) else None
    return op[:80] if isinstance(op, str) else None


def on_signal(engine: Engine, level: str, signame: str) -> None:
    """SIGINT/SIGTERM: apply the configured kill level (if any), then stop gracefully."""
    if level == "none":
        engine.request_stop()
        return
    fut = engine.submit_control(ControlRequest(command_from("kill", f"{signame} received", level),
                                               operator="signal", channel=Channel.SIGNAL))
    fut.add_done_callback(lambda _: engine.request_stop())
