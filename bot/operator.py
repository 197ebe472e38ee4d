"""Operator control: what the engine does with a command from any channel (the CLI through
PostgreSQL, signed MQTT commands, signals, the scheduler's jobs), between candles.

Kill (pause, cancel or flatten) and resume change risk's trading state; a refused command is
audited; scheduled housekeeping (risk ticks, equity snapshots, the model check, the
retrain's outcome) runs here too. Every change goes through the engine's unit of work, so it
commits with its audit event, and a request already carried out is never carried out twice.
The engine hands each request here (``Engine.drain_controls``); the console's REST API will
use the same entry point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.desk import exit_intent
from bot.domain import (
    ControlRequest,
    ControlResult,
    EquitySnapshot,
    Housekeeping,
    Job,
    Kill,
    KillLevel,
    Reject,
    Resume,
    RetrainDone,
    UnitOfWork,
)
from bot.errors import LedgerError
from bot.logs import get_logger
from bot.records import command_row

if TYPE_CHECKING:
    from bot.engine import Engine

log = get_logger("operator")


class OperatorControl:
    """Carries out operator requests on one engine's account."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.done: set[int] = set()  # control_requests rows already carried out

    async def carry_out_now(self, request: ControlRequest) -> ControlResult:
        unit, result = await self.carry_out(request)
        await self.engine.commit(unit)
        return result

    async def carry_out(self, request: ControlRequest) -> tuple[UnitOfWork, ControlResult]:
        unit = UnitOfWork()
        now = self.engine.parts.clock.now_ms()
        if request.request_id is not None and request.request_id in self.done:
            return unit, ControlResult(request.action, note="already carried out")
        command = request.command
        cancelled: int | None = None
        flattened: int | None = None
        still: dict[str, str] | None = None
        note: str | None = None
        match command:
            case Housekeeping() | RetrainDone():
                return self.housekeeping(command, now, unit), ControlResult(command.action)
            case Reject():
                unit.audit.append(self.engine.desk.event(
                    "command.rejected", "command", request.command_id or "-", now, {
                        "channel": request.channel, "reason": command.reason,
                        "level": command.claimed, "claimed_nonce": request.nonce,
                        "operator": request.operator}))
                row = command_row(
                    self.engine.account, request, "rejected", {"reason": command.reason}, now
                )
                unit.commands[row.id] = row
                return unit, ControlResult("reject", reason=command.reason)
            case Kill():
                unit, cancelled, flattened, note = await self.kill(command, request, now, unit)
            case Resume():
                self.engine.transitions.append(
                    self.engine.risk.resume(command.reason, request.operator, now)
                )
                self.engine.audit_transitions(unit, channel=request.channel)
                # what an operator's resume cannot lift, and what will
                still = self.engine.risk.blocks_explained() or None
        machine = self.engine.risk.machine
        outcome = ControlResult(request.action, machine.state.value, machine.current.reason,
                                cancelled, flattened, still, note)
        result = outcome.as_dict()
        if request.command_id is not None:
            unit.audit.append(
                self.engine.desk.event(
                    "command.accepted",
                    "command",
                    request.command_id,
                    now,
                    {"channel": request.channel, "operator": request.operator, **result},
                )
            )
            row = command_row(self.engine.account, request, "accepted", result, now)
            unit.commands[row.id] = row
        if request.request_id is not None:
            self.done.add(request.request_id)
            unit.controls_done[request.request_id] = outcome
        log.warning(
            "operator_command",
            channel=request.channel,
            operator=request.operator,
            **{k: v for k, v in result.items() if k != "action"},
            command=request.action,
        )
        return unit, outcome

    async def kill(self, command: Kill, request: ControlRequest, now: int, unit: UnitOfWork
                   ) -> tuple[UnitOfWork, int | None, int | None, str | None]:
        """HALT, then cancel (cancel, flatten) and close (flatten). Returns the unit to keep
        filling, the orders cancelled, the positions closed and, where a position is still
        open after its exit (refused by the gate or the venue, or not filled), a note naming
        it: the operator must never read "flattened" of a position that is still there. Such a
        position keeps a protective stop: the exit took it, and ``Engine.protect`` puts it
        back at the level last placed."""
        level = command.level
        cancelled: int | None = None
        flattened: int | None = None
        note: str | None = None
        self.engine.transitions.append(
            self.engine.risk.kill(level, command.reason, request.operator, now)
        )
        self.engine.audit_transitions(unit, channel=request.channel)
        # entries are blocked from here; make it durable (and visible) before the slower
        # cancels and closes
        await self.engine.commit(unit)
        unit = UnitOfWork()
        if level in (KillLevel.CANCEL, KillLevel.FLATTEN):
            cancelled = await self.engine.desk.cancel_where(unit, f"kill {level.value}")
        if level is KillLevel.FLATTEN:
            tried = [p for p in self.engine.portfolio.positions() if p.quantity != 0]
            for pos in tried:  # longs and shorts
                unit = await self.engine.act(
                    exit_intent(pos, now, f"kill flatten: {command.reason}", "operator"), unit
                )
            unit = await self.engine.protect(unit, now)  # a refused exit's stop goes back
            left = [p.symbol for p in tried
                    if self.engine.portfolio.position(p.symbol).quantity != 0]
            flattened = len(tried) - len(left)
            if left:
                note = (f"still open after the kill's exit: {', '.join(left)} (refused or not "
                        "filled; the audit trail says why)")
        return unit, cancelled, flattened, note

    def housekeeping(self, command: Housekeeping | RetrainDone, now: int,
                     unit: UnitOfWork) -> UnitOfWork:
        """Scheduled jobs, run in the loop like everything that writes."""
        job = command.job if isinstance(command, Housekeeping) else None
        if job is Job.TICK:
            self.engine.transitions += self.engine.risk.on_clock(now)
            self.engine.audit_transitions(unit)
        elif job is Job.SNAPSHOT:
            pv = self.engine.portfolio.positions_value()
            unit.equity.append(
                EquitySnapshot(
                    self.engine.account, self.engine.run_id, now, self.engine.portfolio.cash, pv
                )
            )
            self.engine.transitions += self.engine.risk.on_equity(
                now, self.engine.portfolio.cash + pv
            )
            self.engine.audit_transitions(unit)
        elif job is Job.MODEL_CHECK:
            unit.audit.append(
                self.engine.desk.event(
                    "model.check",
                    "account",
                    self.engine.account,
                    now,
                    self.engine.risk.model_health(),
                )
            )
        elif job is Job.RETRAIN:
            unit.audit.append(
                self.engine.desk.event(
                    "retrain.skipped",
                    "account",
                    self.engine.account,
                    now,
                    {
                        "reason": f"signal source {self.engine.parts.source.name!r} has no "
                        "trainable model",
                        "requested_by_breaker": self.engine.risk.report.retrain_requests,
                    },
                )
            )
        elif isinstance(command, RetrainDone):
            done = command.result
            info: dict[str, str] = {"log": done.log} if done is not None else {}
            new = done.promoted if done is not None else None
            # the next candle is scored by the promoted version (where the source has models)
            if new is not None and self.engine.parts.source.swap(new):
                info["now_active"] = new.id
            unit.audit.append(
                self.engine.desk.event(
                    "retrain.finished",
                    "account",
                    self.engine.account,
                    now,
                    {"outcome": command.outcome, **info},
                )
            )
        return unit

    async def poll(self) -> None:
        """The database says there may be new operator requests: queue the unseen ones."""
        try:
            pending = await self.engine.parts.ledger.pending_controls(self.engine.account)
        except LedgerError:
            return
        for request in pending:
            if request.request_id not in self.done:
                self.engine.controls.put_nowait((request, None))
                self.engine.wake.set()
