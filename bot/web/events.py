"""Server-sent events for the console: a ``state`` event whenever the ledger moves.

The console LISTENs on the control channel (a kill or resume from any channel NOTIFYs it at
once) and watches the audit chain's head, which every committed change moves; either wakes
it to read the account's status and send it, when it differs from what it sent last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from bot.ledger.control_requests import CHANNEL
from bot.logs import get_logger

log = get_logger("web.events")


class Changes:
    """One LISTEN connection shared by every open event stream; each stream waits on
    ``changed`` and re-checks the head itself, so a lost notification costs at most
    ``poll_s``."""

    def __init__(self, dsn: str, poll_s: float = 1.0) -> None:
        self.dsn, self.poll_s = dsn, poll_s
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        import asyncpg

        def notified(*_: Any) -> None:
            self.changed.set()

        while True:
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
                try:
                    await conn.add_listener(CHANNEL, notified)
                    while not conn.is_closed():
                        await asyncio.sleep(self.poll_s)
                finally:
                    conn.terminate()
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("listen_failed", error=str(exc))
                await asyncio.sleep(self.poll_s)

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)
        self.changed.clear()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def stream(changes: Changes, head: Callable[[], Awaitable[int]],
                 status: Callable[[], Awaitable[dict[str, Any]]],
                 disconnected: Callable[[], Awaitable[bool]],
                 keepalive_s: float = 15.0) -> AsyncIterator[str]:
    """``event: state`` with the status whenever it changes; a comment line as keep-alive."""
    sent: str | None = None
    last_head = -1
    idle = 0.0
    while not await disconnected():
        now_head = await head()
        if now_head != last_head:
            last_head = now_head
            body = json.dumps(await status(), sort_keys=True)
            if body != sent:
                sent = body
                idle = 0.0
                yield f"event: state\ndata: {body}\n\n"
        await changes.wait(changes.poll_s)
        idle += changes.poll_s
        if idle >= keepalive_s:
            idle = 0.0
            yield ": keep-alive\n\n"
