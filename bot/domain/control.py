"""An operator's command, from any channel (CLI, MQTT, signals, the scheduler), and the
record the ledger keeps of a signed one."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from bot.domain.message import message
from bot.domain.risk import KillLevel


class PromotedModel(Protocol):
    """A newly promoted model version, as the retrain job hands it to the signal source."""

    @property
    def id(self) -> str: ...


@message
class RetrainOutcome:
    """What the retrain job reports back: the tail of its children's output (scrubbed), and
    the newly promoted version where it promoted one."""

    log: str
    promoted: PromotedModel | None = None


class Channel(StrEnum):
    """Where an operator command came from; every channel maps to the same commands."""

    CLI = "cli"
    HTTP = "http"
    MQTT = "mqtt"
    SIGNAL = "signal"
    JOBS = "jobs"


@message
class Kill:
    """HALT trading: pause; also cancel working orders (cancel); also close positions
    (flatten). Latches until a ``Resume``."""

    level: KillLevel
    reason: str
    action: ClassVar[str] = "kill"


@message
class Resume:
    """Back to ACTIVE from HALTED (or an open-ended REDUCING), with who and why recorded."""

    reason: str
    action: ClassVar[str] = "resume"


@message
class Reject:
    """A command refused before it reached the engine (bad signature, replay, stale): only
    audited. ``claimed`` is what it claimed to be, unverified."""

    reason: str
    claimed: str | None = None
    action: ClassVar[str] = "reject"


class Job(StrEnum):
    """The scheduler's housekeeping, run in the engine's loop like everything that writes."""

    TICK = "tick"  # stale-data and state-expiry checks
    SNAPSHOT = "snapshot"  # an equity snapshot
    MODEL_CHECK = "model_check"  # the model-degradation check
    RETRAIN = "retrain"  # a retrain with no trainable model: audited as skipped


@message
class Housekeeping:
    job: Job

    @property
    def action(self) -> str:
        return self.job.value


@message
class RetrainDone:
    """The retrain job's outcome: ``outcome`` in words, and what it produced."""

    outcome: str
    result: RetrainOutcome | None = None
    action: ClassVar[str] = "retrain_done"


OperatorCommand = Kill | Resume | Reject | Housekeeping | RetrainDone
"""The closed set of commands; ``bot/operator.py`` matches on it."""


@message
class ControlRequest:
    """An operator's command with where it came from and who sent it. ``request_id`` is its
    ``control_requests`` row (CLI and HTTP); ``command_id`` and ``nonce`` a signed MQTT
    command's."""

    command: OperatorCommand
    operator: str
    channel: Channel
    request_id: int | None = None
    command_id: str | None = None
    nonce: str | None = None

    @property
    def action(self) -> str:
        return self.command.action

    @property
    def level(self) -> str | None:
        """A kill's level; a rejected command's claimed action."""
        match self.command:
            case Kill(level=level):
                return level.value
            case Reject(claimed=claimed):
                return claimed
        return None

    @property
    def reason(self) -> str:
        match self.command:
            case Kill(reason=r) | Resume(reason=r) | Reject(reason=r):
                return r
            case RetrainDone(outcome=o):
                return o
        return "scheduled"


def command_from(action: str, reason: str, level: str | None = None) -> Kill | Resume:
    """A kill or resume as stored (``control_requests``) or sent (MQTT): a clear error
    naming what is wrong."""
    if action == "kill":
        try:
            return Kill(KillLevel(level or "pause"), reason)
        except ValueError:
            raise ValueError(f"kill level {level!r}: expected pause, cancel or "
                             "flatten") from None
    if action == "resume":
        return Resume(reason)
    raise ValueError(f"unknown operator command {action!r}: expected kill or resume")


@message
class ControlResult:
    """What carrying out a ``ControlRequest`` did: the trading state after it and, by action,
    what it cancelled, flattened or could not lift. ``as_dict`` is the form the ledger's
    ``control_requests.result``, the audit payload and a signed command's ack carry."""

    action: str
    state: str | None = None  # the trading state after it (kill, resume)
    reason: str | None = None  # the state's reason, or why a command was rejected
    cancelled: int | None = None  # kill cancel|flatten: orders cancelled
    flattened: int | None = None  # kill flatten: positions closed (not merely tried)
    still_blocked: Mapping[str, str] | None = None  # resume: blocks it cannot lift, and why
    note: str | None = None  # e.g. "already carried out"; a kill flatten: what it left open

    def as_dict(self) -> dict[str, Any]:
        """The fields that say something, in a fixed order (``action`` first)."""
        out: dict[str, Any] = {"action": self.action}
        for key in ("cancelled", "flattened", "still_blocked", "note", "state", "reason"):
            value = getattr(self, key)  # not probing: this dataclass's own fields, by name
            if value is not None:
                out[key] = dict(value) if key == "still_blocked" else value
        return out


@message
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
