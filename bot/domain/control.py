"""An operator's command, from any channel (CLI, MQTT, signals, the scheduler)."""

from __future__ import annotations

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
