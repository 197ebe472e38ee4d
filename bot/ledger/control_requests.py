"""The kill switch through the database: ``stackbot kill`` and ``stackbot resume`` work with no
message broker at all.

A request row, the latched trading state and their audit event commit in one transaction
(the caller decides the state: this module stores it, and runs no state machine),
then ``NOTIFY stackbot_control`` wakes a running instance, which carries out the rest
(cancelling, flattening) and marks the request done. With no instance running, the state is
already HALTED in the ledger and the next start carries out what is pending.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import AuditEvent, Transition
from bot.ledger import tables as t
from bot.ledger.rows import json_text, to_dt, to_ms
from bot.ledger.urls import async_url, plain_url

CHANNEL = "stackbot_control"


Decide = Callable[[dict[str, Any] | None, int], tuple[dict[str, Any], Transition]]
"""From the stored trading state (None: none yet) and the time in ms: the state to latch and
the transition to audit (``risk.state.operator_command``, bound to the request)."""


async def request_control(engine: AsyncEngine, account: str, action: str, reason: str,
                          operator: str, level: str | None, decide: Decide,
                          channel: str = "cli") -> dict[str, Any]:
    """Record the request, latch the state ``decide`` gives, audit, notify: one transaction,
    the stored state locked while it is decided. ``channel`` is where it came from (``cli``,
    or ``http`` for the console). Returns the new state."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        detail = (await conn.execute(select(t.RiskStateRow.detail).where(
            t.RiskStateRow.account == account).with_for_update())).scalar()
        ts = to_ms(now)
        snap, tr = decide(detail, ts)
        req_id = (await conn.execute(pg_insert(t.ControlRequestRow).values(
            account=account, action=action, level=level, reason=reason, operator=operator,
            channel=channel).returning(t.ControlRequestRow.id))).scalar_one()
        stmt = pg_insert(t.RiskStateRow).values(account=account, state=snap["state"],
                                                 reason=snap["reason"], detail=snap, updated_at=now)
        await conn.execute(stmt.on_conflict_do_update(index_elements=["account"], set_={
            "state": stmt.excluded.state, "reason": stmt.excluded.reason,
            "detail": stmt.excluded.detail, "updated_at": stmt.excluded.updated_at}))
        event = AuditEvent("risk.state_changed", "account", account, account, channel, ts, {
            "from": tr.before.value, "to": tr.after.value, "reason": tr.reason,
            "by": "operator" if action == "resume" else "kill", "operator": operator,
            "channel": channel, "level": level, "request_id": req_id})
        await conn.execute(insert(t.AuditEventRow).values(
            account=event.account, run_id=event.run_id, ts=to_dt(event.ts), kind=event.kind,
            entity=event.entity, entity_id=event.entity_id,
            payload=json.loads(json_text(event.payload))))
        await conn.execute(text("SELECT pg_notify(:ch, :payload)"),
                           {"ch": CHANNEL, "payload": json.dumps({"account": account,
                                                                  "id": req_id})})
    return {"request_id": req_id, **snap}


class ControlListener:
    """LISTEN on the control channel; calls ``on_request(account)`` for each notification.
    Reconnects on its own; a lost notification is caught by ``poll_s`` polling."""

    def __init__(self, url: str, on_request: Callable[[str], object], poll_s: float = 5.0) -> None:
        self.dsn = plain_url(async_url(url))
        self.on_request = on_request
        self.poll_s = poll_s
        self._task: asyncio.Task[None] | None = None

    def start(self, account: str) -> None:
        self._task = asyncio.create_task(self._run(account))

    async def _run(self, account: str) -> None:
        import asyncpg

        def notified(_: Any, __: int, ___: str, payload: str) -> None:
            try:
                acct = json.loads(payload).get("account")
            except ValueError:
                return
            if acct == account:
                self.on_request(account)

        while True:
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
                try:
                    await conn.add_listener(CHANNEL, notified)
                    while not conn.is_closed():  # a restarted server: listen again
                        await asyncio.sleep(self.poll_s)
                        self.on_request(account)  # safety net: look for pending requests
                finally:
                    conn.terminate()  # immediate: never waits on a server that went away
            except (TimeoutError, OSError, asyncpg.PostgresError):
                await asyncio.sleep(self.poll_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
