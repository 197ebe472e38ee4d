"""Conformance: real Binance error responses, through ccxt's real ``binance`` class, meet the
behaviour in the policy table (``docs/faults.md``).

``tests/fixtures/binance_errors.json`` holds each response as Binance sends it: HTTP status,
headers and ``{"code","msg"}`` body (or a proxy's bare page), with its source: Binance's
error-code and HTTP-return-code pages, ccxt's own exception map, or a user's report of what
the venue returned. The loopback venue answers the first matching request with that response
and behaves normally afterwards, so each test sees what our code does next: how many times a
read is sent, whether the clock is resynced, whether an order is looked up or sent again.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import ccxt
import pytest
from aiohttp import web

from bot.brokers.live import LiveBroker
from bot.clock import WallClock
from bot.config import ExchangeSettings
from bot.domain import Order, OrderStatus, OrderType, Side
from bot.engine import client_order_id
from bot.errors import ExchangeError, FatalExchangeError, OrderAction, ReadAction, VenueError
from bot.exchange.client import make_exchange
from bot.exchange.policy import RULES, policy_for
from bot.exchange.retry import RetryPolicy, read
from bot.sim.binance import build

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "binance_errors.json").read_text())
RESPONSES = FIXTURES["responses"]
KEY, SECRET = "conf-key-0123456789", "conf-secret-0123456789"


class Venue:
    """The simulator, with one scripted answer for the next request to (method, path)."""

    def __init__(self) -> None:
        self.sim = build(["BTC/USDT"], "1m", speed=1.0, history=60, seed=4, future=600)
        self.sim.open_account(KEY, SECRET, {"USDT": "100000", "BTC": "0"})
        self.script: dict[tuple[str, str], dict[str, Any]] = {}
        self.hits: dict[tuple[str, str], int] = {}

    @web.middleware
    async def scripted(self, request: web.Request, handler: Any) -> web.StreamResponse:
        key = (request.method, request.path)
        self.hits[key] = self.hits.get(key, 0) + 1
        fx = self.script.pop(key, None)
        if fx is None:
            return await handler(request)
        headers = {"Content-Type": "application/json", **fx["headers"]}
        return web.Response(status=fx["status"], text=fx["body"], headers=headers)

    async def start(self) -> int:
        app = self.sim.app()
        app.middlewares.insert(0, self.scripted)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


@pytest.fixture
async def venue() -> AsyncIterator[tuple[Venue, Any]]:
    v = Venue()
    port = await v.start()
    cfg = ExchangeSettings(url=f"http://127.0.0.1:{port}", api_key=KEY, secret=SECRET,  # type: ignore[arg-type]
                           timeout_ms=2000)
    ex = make_exchange(cfg, with_ws=False)
    await ex.load_markets()
    yield v, ex
    await ex.close()
    await v.runner.cleanup()


def test_every_fixture_is_classified_by_ccxt_as_stated() -> None:
    """The fixtures' classes are what ccxt's binance class really raises for them."""
    bn = ccxt.binance()
    for fx in RESPONSES:
        try:
            parsed = json.loads(fx["body"])
        except ValueError:
            parsed = None
        with pytest.raises(ccxt.BaseError) as info:
            bn.handle_errors(fx["status"], "", "https://api.binance.com/api/v3/order", "POST",
                             fx["headers"], fx["body"], parsed, {}, "")
            bn.handle_http_status_code(fx["status"], "", "u", "POST", fx["body"])
        assert type(info.value).__name__ == fx["ccxt_class"], fx["name"]
        rule = policy_for(type(info.value)).rule
        assert (rule.read.name, rule.order.name) == (fx["read"], fx["order"]), fx["name"]


def test_the_fixtures_cover_every_rule_a_binance_answer_can_reach() -> None:
    reachable = {policy_for(c).rule_from for c in (getattr(ccxt, fx["ccxt_class"])
                                                   for fx in RESPONSES)}
    # rules no Binance spot REST answer maps to: ccxt-side refusals, websockets, withdrawals
    local_only = {"BaseError", "ChecksumError", "NotSupported", "ArgumentsRequired",
                  "InvalidAddress", "ExchangeClosedByUser", "UnsubscribeError",
                  "InvalidProxySettings", "RestrictedLocation", "ManualInteractionNeeded",
                  "DuplicateOrderId", "OperationRejected"}
    assert set(RULES) - local_only <= reachable, set(RULES) - local_only - reachable


@pytest.mark.parametrize("fx", RESPONSES, ids=[f"{f['ccxt_class']}-{f['name']}" for f in RESPONSES])
async def test_a_read_meets_the_policy(venue: tuple[Venue, Any], fx: dict[str, Any]) -> None:
    v, ex = venue
    v.script[("GET", "/api/v3/account")] = fx
    policy = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02)
    action = ReadAction[fx["read"]]
    t0 = time.monotonic()
    if action in (ReadAction.FAIL, ReadAction.FATAL):
        expected = FatalExchangeError if action is ReadAction.FATAL else ExchangeError
        with pytest.raises(expected) as info:
            await read(ex, lambda: ex.fetch_balance(), "balance", policy)
        assert info.value.ccxt_class == fx["ccxt_class"]
        assert action is not ReadAction.FAIL or not isinstance(info.value, FatalExchangeError)
        assert v.hits[("GET", "/api/v3/account")] == 1  # not retried
        return
    time_before = v.hits.get(("GET", "/api/v3/time"), 0)
    balance = await read(ex, lambda: ex.fetch_balance(), "balance", policy)
    assert balance["total"]["USDT"] == 100000  # the retry got the real answer
    assert v.hits[("GET", "/api/v3/account")] == 2
    resynced = v.hits.get(("GET", "/api/v3/time"), 0) - time_before
    assert resynced == (1 if action is ReadAction.RESYNC else 0)
    if action is ReadAction.RETRY_AFTER and "Retry-After" in fx["headers"]:
        assert time.monotonic() - t0 >= float(fx["headers"]["Retry-After"]) * 0.95


@pytest.mark.parametrize("fx", RESPONSES, ids=[f"{f['ccxt_class']}-{f['name']}" for f in RESPONSES])
async def test_an_order_meets_the_policy(venue: tuple[Venue, Any], fx: dict[str, Any]) -> None:
    """create_order answered with the fixture: looked up (never resent) when its outcome is
    unknown, resent once under the same client id after -1021, booked as a rejection, or the
    end of the run."""
    v, ex = venue
    broker = LiveBroker(ex, WallClock(), "USDT", recv_window_ms=1000,
                        lookup_policy=RetryPolicy(attempts=1))
    cid = client_order_id("conf", "BTC/USDT", 1, fx["name"])
    order = Order(cid, "conf", "run", "BTC/USDT", Side.BUY, OrderType.MARKET, D("0.01"),
                  OrderStatus.PENDING_SUBMIT, 0, 0, 1, "v", "conformance")
    v.script[("POST", "/api/v3/order")] = fx
    action = OrderAction[fx["order"]]
    post, lookup = ("POST", "/api/v3/order"), ("GET", "/api/v3/order")
    if action in (OrderAction.FATAL, OrderAction.REJECTED, OrderAction.REJECTED_RECONCILE):
        with pytest.raises(VenueError) as info:
            await broker.submit(order)
        assert info.value.order is action
        assert isinstance(info.value, FatalExchangeError) == (action is OrderAction.FATAL)
        assert v.hits[post] == 1 and v.hits.get(lookup, 0) == 0  # nothing resent or asked
        assert broker.in_doubt == 0
        return
    update = await broker.submit(order)
    accounts = v.sim.account
    assert accounts is not None
    if action is OrderAction.RESEND:
        assert v.hits[post] == 2 and v.hits.get(("GET", "/api/v3/time"), 0) >= 1
        assert update.order.status is OrderStatus.FILLED
        assert [o.client_id for o in accounts.orders.values()] == [cid]  # one order, same id
        return
    # outcome unknown: the venue never saw it (the scripted answer came first), the broker
    # asked for it by client id and keeps it in doubt until the recvWindow has passed
    assert action is OrderAction.UNKNOWN
    assert v.hits[post] == 1 and v.hits[lookup] >= 1
    assert update.order.status is OrderStatus.PENDING_SUBMIT and broker.in_doubt == 1
    assert accounts.orders == {}
