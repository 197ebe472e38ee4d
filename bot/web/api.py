"""The console's JSON API (``/api/v1``), described by its OpenAPI schema. Reads come from the
ledger; ``kill`` and ``resume`` go through the database request path every channel shares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from bot.domain import Channel, command_from
from bot.ledger.audit import verify_chain
from bot.ledger.control_requests import request_control
from bot.web import views
from bot.web.console import Console, Operator, require, require_csrf
from bot.web.events import stream
from risk.state import operator_command

router = APIRouter(tags=["console"])
T = TypeVar("T")
Auth = Annotated[Operator, Depends(require)]
Limit = Annotated[int, Query(ge=1, le=1000)]


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


async def _read(request: Request, view: Callable[..., Awaitable[T]], *args: Any) -> T:
    """One ledger read on a pooled connection."""
    async with _console(request).db.connect() as conn:
        return await view(conn, *args)


class KillBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    level: Literal["pause", "cancel", "flatten"] = Field(
        description="pause: no new entries; cancel: also cancel working orders; flatten: "
        "also close positions")
    reason: str = Field(min_length=1, max_length=500, description="goes to the audit trail")


class ResumeBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    reason: str = Field(min_length=1, max_length=500, description="goes to the audit trail")


class CommandAccepted(BaseModel):
    account: str
    state: str
    reason: str
    request_id: int
    channel: str


async def send_command(console: Console, who: Operator, action: str, reason: str,
                       level: str | None) -> CommandAccepted:
    """Latch the state and record the request in one audited transaction; a running bot is
    woken by NOTIFY and carries out the rest (cancels, closes)."""
    command = command_from(action, reason, level)  # the typed command, checked
    state = await request_control(
        console.db, console.account, command.action, reason, who.name, level,
        lambda stored, ts: operator_command(stored, action, reason, who.name, level, ts),
        channel=Channel.HTTP.value)
    return CommandAccepted(account=console.account, state=state["state"],
                           reason=state["reason"], request_id=state["request_id"],
                           channel=Channel.HTTP.value)


@router.post("/kill", response_model=CommandAccepted, status_code=202)
async def kill(body: KillBody, request: Request, who: Auth) -> CommandAccepted:
    """The kill switch: HALTED at once in the ledger; latches until resumed."""
    await require_csrf(request, who)
    return await send_command(_console(request), who, "kill", body.reason, body.level)


@router.post("/resume", response_model=CommandAccepted, status_code=202)
async def resume(body: ResumeBody, request: Request, who: Auth) -> CommandAccepted:
    """Back to ACTIVE, with the operator and the reason audited."""
    await require_csrf(request, who)
    return await send_command(_console(request), who, "resume", body.reason, None)


@router.get("/status")
async def status(request: Request, who: Auth) -> dict[str, Any]:
    """Trading state and reason, every breaker's reading and limit, cash, equity, the run and
    the active ensemble."""
    console = _console(request)
    return await _read(request, views.status, console.settings, console.account)


@router.get("/equity")
async def equity(request: Request, who: Auth, limit: Limit = 1000) -> list[dict[str, Any]]:
    """The equity curve with its drawdown, oldest first, thinned to ``limit`` points."""
    return await _read(request, views.equity, _console(request).account, limit)


@router.get("/positions")
async def positions(request: Request, who: Auth) -> list[dict[str, Any]]:
    return await _read(request, views.positions, _console(request).account)


@router.get("/orders")
async def orders(request: Request, who: Auth, working: bool = True,
                 limit: Limit = 100) -> list[dict[str, Any]]:
    """Working orders (or, with ``working=false``, the newest orders of any status)."""
    return await _read(request, views.orders, _console(request).account, working, limit)


@router.get("/fills")
async def fills(request: Request, who: Auth, limit: Limit = 50) -> list[dict[str, Any]]:
    return await _read(request, views.fills, _console(request).account, limit)


@router.get("/signals")
async def signals(request: Request, who: Auth, limit: Limit = 50) -> list[dict[str, Any]]:
    """The newest signals with each ensemble member's calibrated p."""
    return await _read(request, views.signals, _console(request).account, limit)


@router.get("/runs")
async def runs(request: Request, who: Auth, limit: Limit = 50,
               mode: Literal["backtest", "paper", "live"] | None = None) -> list[dict[str, Any]]:
    return await _read(request, views.runs, limit, mode)


@router.get("/audit")
async def audit(request: Request, who: Auth, limit: Limit = 100,
                before: Annotated[int | None, Query(ge=1)] = None,
                all_accounts: bool = False) -> list[dict[str, Any]]:
    """The audit trail, newest first; page with ``before`` (a sequence number)."""
    account = None if all_accounts else _console(request).account
    return await _read(request, views.audit, account, limit, before)


@router.get("/audit/verify")
async def audit_verify(request: Request, who: Auth) -> dict[str, Any]:
    """Recompute the whole hash chain: intact, or where it breaks and why."""
    report = await verify_chain(_console(request).db)
    return {"ok": report.ok, "rows": report.rows, "broken_seq": report.broken_seq,
            "reason": report.reason, "summary": report.describe()}


@router.get("/models")
async def models(request: Request, who: Auth) -> list[dict[str, Any]]:
    """Registered model versions, newest first, with their out-of-sample metrics."""
    return await _read(request, views.models)


@router.get("/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(request: Request, who: Auth) -> StreamingResponse:
    """Server-sent events: ``state`` (the status document) whenever the ledger moves."""
    console = _console(request)
    changes = console.changes
    assert changes is not None

    async def head() -> int:
        return await _read(request, views.head_seq)

    async def current() -> dict[str, Any]:
        return await _read(request, views.status, console.settings, console.account)

    return StreamingResponse(stream(changes, head, current, request.is_disconnected),
                             media_type="text/event-stream",
                             headers={"X-Accel-Buffering": "no"})
