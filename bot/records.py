"""Ledger records the engine writes for things that are not orders: the signed commands it
saw, a trading-state change and a fatal venue error. Pure: each returns or fills rows and
audit payloads; the engine commits them."""

from __future__ import annotations

import uuid
from typing import Any

from bot.domain import CommandRecord, ControlRequest, Transition
from bot.errors import FatalExchangeError


def command_row(account: str, request: ControlRequest, verdict: str, ack: dict[str, Any],
                now: int) -> CommandRecord:
    """Every signed command seen: its id makes it idempotent, its nonce unreplayable."""
    cid = request.command_id or "anonymous"
    nonce = request.nonce
    if verdict != "accepted":
        # a rejected message proves nothing: its id and nonce must not block real ones
        tag = uuid.uuid4().hex[:12]
        cid, nonce = f"{cid}#rejected-{tag}", f"rejected-{tag}"
    action = f"{request.action}:{request.level}" if request.level else request.action
    return CommandRecord(cid, account, nonce or f"none-{uuid.uuid4().hex}", action, verdict,
                         ack, now)


def fatal_payload(exc: FatalExchangeError) -> dict[str, object]:
    """Why a run ended on a configuration or permission error, and what to fix."""
    return {"error": " ".join(str(exc).split())[:500], "ccxt_class": exc.ccxt_class,
            "kind": type(exc).__name__, "fix": exc.fix}


def transition_payload(t: Transition, channel: str | None = None) -> dict[str, object]:
    """A trading-state change as its audit event tells it: from, to, why, by whom, how."""
    payload: dict[str, object] = {
        "from": t.before.value, "to": t.after.value, "reason": t.reason, "by": t.source,
    }
    if t.operator:
        payload["operator"] = t.operator
    if channel:
        payload["channel"] = channel
    return payload
