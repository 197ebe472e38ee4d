"""An operator's command, from any channel (CLI, MQTT, signals, the scheduler), and the
record the ledger keeps of a signed one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """An operator's command, from any channel: kill (pause|cancel|flatten) or resume."""

    action: str  # "kill" | "resume" | "status"
    reason: str
    operator: str
    channel: str  # "cli" | "mqtt" | "signal"
    level: str | None = None
    request_id: int | None = None  # control_requests row (CLI channel)
    command_id: str | None = None  # MQTT command id
    nonce: str | None = None  # MQTT command nonce
    payload: Any = None  # internal requests only (e.g. a newly promoted model)


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A signed command as the ledger keeps it (``commands`` table): its id makes it
    idempotent and its nonce unreplayable; ``ack`` is what its sender was told."""

    id: str
    account: str
    nonce: str
    action: str  # "kill:cancel", "resume", ...
    verdict: str  # "accepted" | "rejected"
    ack: Mapping[str, Any]
    received_at: int  # ms
