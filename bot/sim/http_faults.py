"""How the simulated venue answers an HTTP fault that the ``FaultPlan`` (``bot/sim/faults.py``)
chose for a request: Binance's documented status, headers and ``{"code","msg"}`` body, a
proxy's bare 5xx, a late answer, or a connection cut before or after the request is carried
out.

Bodies from https://developers.binance.com/docs/binance-spot-api-docs/errors; statuses from
.../rest-api/http-return-codes: 5XX for its internal errors, after which "the execution status
is UNKNOWN and could have been a success", so an order is then carried out half of the time.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot.sim.account import HELD
from bot.sim.faults import FaultPlan

if TYPE_CHECKING:
    from bot.sim.binance import SimClock

BODIES = {
    "unknown_error": (500, -1000, "An unknown error occurred while processing the request."),
    "disconnected": (503, -1001, "Internal error; unable to process your request. Please "
                                 "try again."),
    "send_unknown": (503, -1007, "Timeout waiting for response from backend server. Send "
                                 "status unknown; execution status unknown."),
}
# kinds after which an order may or may not have been carried out (5XX: status unknown)
MAYBE_EXECUTED = ("unknown_error", "send_unknown", "server_error")


async def fault_answer(kind: str, request: web.Request, handler: Any, f: FaultPlan,
                       clock: SimClock) -> web.StreamResponse:
    """The venue's answer to ``request`` under the fault ``kind`` (``handler`` carries the
    request out, where the fault lets it through)."""
    if kind == "clock_skew":  # the venue's clock jumps; a -1021 follows for signed calls
        clock.skew_ms = 0 if clock.skew_ms else f.skew_step_ms
        return await handler(request)
    f.record(kind)
    if kind in ("rate_limit", "ban"):
        msg = ("Too much request weight used; current limit is 6000 request weight per 1 "
               "MINUTE. Please use WebSocket Streams for live updates to avoid polling the "
               "API." if kind == "rate_limit" else
               f"Way too much request weight used; IP banned until "
               f"{clock.server_ms() + 1000 * f.retry_after_s}. Please use WebSocket "
               "Streams for live updates to avoid bans.")
        return web.json_response({"code": -1003, "msg": msg},
                                 status=429 if kind == "rate_limit" else 418,
                                 headers={"Retry-After": str(f.retry_after_s)})
    if kind in BODIES or kind == "server_error":
        if request.method != "GET" and kind in MAYBE_EXECUTED and f.coin():
            await handler(request)  # carried out; the client is told nothing useful
        if kind == "server_error":  # a proxy's bare answer: no Binance body at all
            return web.Response(status=f._rng.choice((502, 503, 504)),
                                text="Service Unavailable", content_type="text/html")
        status, code, msg = BODIES[kind]
        return web.json_response({"code": code, "msg": msg}, status=status)
    if kind in ("slow", "timeout"):
        if request.can_read_body:
            await request.read()  # arrived whole; the answer is what is late

        async def late() -> web.StreamResponse:
            await asyncio.sleep(f.slow_s if kind == "slow" else f.hold_s)
            request[HELD] = True
            return await handler(request)

        # shielded: the venue carries it out even after the client hung up
        return await asyncio.shield(asyncio.ensure_future(late()))
    if kind == "lost":
        await asyncio.shield(asyncio.ensure_future(handler(request)))  # no answer arrives
    transport = request.transport
    if transport is not None:
        transport.abort()  # the client sees the connection reset
    return web.Response(status=499)  # never delivered
