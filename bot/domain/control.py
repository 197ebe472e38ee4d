"""An operator's command, from any channel (CLI, MQTT, signals, the scheduler), and the
record the ledger keeps of a signed one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class PromotedModel(Protocol):
    """A newly promoted model version, as the retrain job hands it to the signal source."""

    @property
    def id(self) -> str: ...


@dataclass(frozen=True, slots=True)
class RetrainOutcome:
    """What the retrain job reports back: the tail of its children's output (scrubbed), and
    the newly promoted version where it promoted one."""

    log: str
    promoted: PromotedModel | None = None


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
    payload: RetrainOutcome | None = None  # "retrain_done" only


@dataclass(frozen=True, slots=True)
class ControlResult:
    """What carrying out a ``ControlRequest`` did: the trading state after it and, by action,
    what it cancelled, flattened or could not lift. ``as_dict`` is the form the ledger's
    ``control_requests.result``, the audit payload and a signed command's ack carry."""

    action: str
    state: str | None = None  # the trading state after it (kill, resume)
    reason: str | None = None  # the state's reason, or why a command was rejected
    cancelled: int | None = None  # kill cancel|flatten: orders cancelled
    flattened: int | None = None  # kill flatten: positions closed
    still_blocked: Mapping[str, str] | None = None  # resume: blocks it cannot lift, and why
    note: str | None = None  # e.g. "already carried out"

    def as_dict(self) -> dict[str, Any]:
        """The fields that say something, in a fixed order (``action`` first)."""
        out: dict[str, Any] = {"action": self.action}
        for key in ("cancelled", "flattened", "still_blocked", "note", "state", "reason"):
            value = getattr(self, key)  # not probing: this dataclass's own fields, by name
            if value is not None:
                out[key] = dict(value) if key == "still_blocked" else value
        return out


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
