"""The simulator's private API: HMAC-signed Binance spot endpoints for an account with real
balances and orders (``/api/v3/account``, ``order`` create/query/cancel, ``openOrders``,
``myTrades``).

Market orders fill at the current price (the forming candle's close); limit orders rest and
fill when the price trades through them, checked on every request. As on Binance, a client
order id must be unique among *open* orders only: a resent order whose first copy already
filled is accepted and fills again, which is exactly the mistake a client must never make.
Faults come from the venue's ``FaultPlan`` (partial fills, insufficient funds, rejections);
``execute_then_delay_s`` executes an order and then answers late, ``reject_next`` refuses the
next order.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from bot.sim.faults import FaultPlan

HELD = web.RequestKey("held", bool)

FEE = Decimal("0.001")
OPEN = ("NEW", "PARTIALLY_FILLED")
_wall = time.time


@dataclass
class SimOrder:
    order_id: int
    client_id: str
    symbol: str  # exchange id, BTCUSDT
    side: str  # BUY / SELL
    type: str  # MARKET / LIMIT
    qty: Decimal
    price: Decimal | None
    status: str = "NEW"
    executed: Decimal = Decimal(0)
    quote: Decimal = Decimal(0)
    time: int = 0
    fills: list[dict[str, Any]] = field(default_factory=list)
    received_at: float = field(default_factory=lambda: _wall())  # wall clock, for audit checks

    def view(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol, "orderId": self.order_id, "orderListId": -1,
            "clientOrderId": self.client_id,
            "price": f"{self.price or 0:.8f}" if self.type == "LIMIT" else "0.00000000",
            "origQty": f"{self.qty:.8f}", "executedQty": f"{self.executed:.8f}",
            "cummulativeQuoteQty": f"{self.quote:.8f}", "status": self.status,
            "timeInForce": "GTC", "type": self.type, "side": self.side,
            "stopPrice": f"{self.price:.8f}" if self.type == "STOP_LOSS" else "0.00000000",
            "icebergQty": "0.00000000", "time": self.time, "updateTime": self.time,
            "isWorking": True, "workingTime": self.time, "origQuoteOrderQty": "0.00000000",
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }


class SimAccount:
    def __init__(self, api_key: str, secret: str, balances: dict[str, Decimal],
                 price_of: Callable[[str], Decimal | None], now_ms: Callable[[], int],
                 faults: FaultPlan | None = None,
                 server_ms: Callable[[], int] | None = None) -> None:
        self.api_key, self.secret = api_key, secret
        self.balances = dict(balances)
        self.price_of = price_of
        self.now_ms = now_ms
        self.server_ms = server_ms or (lambda: int(time.time() * 1000))
        self.orders: dict[int, SimOrder] = {}
        self.by_client: dict[str, SimOrder] = {}
        self.trades: list[dict[str, Any]] = []
        self._ids = itertools.count(1000)
        self._trade_ids = itertools.count(1)
        self.execute_then_delay_s = 0.0
        self.reject_next = 0
        self.bad_signatures = 0
        self.faults = faults or FaultPlan()
        self.expired_after_recv_window = 0
        # answers for an account the venue refuses: "METHOD /path" (or "*") -> (status, code,
        # msg), e.g. a key without trading rights or a suspended account
        self.refuse: dict[str, tuple[int, int, str]] = {}
        # the venue's own check before it accepts an order (tests: is its audit row
        # committed?); awaited with the client order id
        self.before_accept: Callable[[str], Any] | None = None

    # ---- protocol -----------------------------------------------------------------------
    def _err(self, status: int, code: int, msg: str) -> web.Response:
        return web.json_response({"code": code, "msg": msg}, status=status)

    async def verify(self, request: web.Request) -> dict[str, str] | web.Response:
        """Verify the API key and the HMAC-SHA256 signature over query + body."""
        if request.headers.get("X-MBX-APIKEY") != self.api_key:
            return self._err(401, -2015, "Invalid API-key, IP, or permissions for action.")
        query = request.query_string
        body = (await request.text()) if request.body_exists else ""
        total, sig = "", None
        for part in (query, body):
            if "signature=" in part:
                head, _, sig = part.rpartition("signature=")
                part = head.rstrip("&")
            total += part
        expected = hmac.new(self.secret.encode(), total.encode(), hashlib.sha256).hexdigest()
        if sig is None or not hmac.compare_digest(sig.encode("utf-8", "replace"),
                                                  expected.encode()):
            self.bad_signatures += 1
            return self._err(400, -1022, "Signature for this request is not valid.")
        refused = self.refuse.get(f"{request.method} {request.path}") or self.refuse.get("*")
        if refused is not None:
            return self._err(*refused)
        params = dict(parse_qsl(query))
        params.update(parse_qsl(body))
        ts = int(params.get("timestamp", "0"))
        window = int(params.get("recvWindow", "5000"))
        server = self.server_ms()
        # Binance's timing rule ("Timing security", spot REST docs): accepted only if
        # timestamp < serverTime + 1000 and serverTime - timestamp <= recvWindow
        if not (ts < server + 1000 and server - ts <= window):
            if request.get(HELD):
                self.expired_after_recv_window += 1  # a request held past its window
            else:
                self.faults.record("clock_skew")
            return self._err(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        return params

    def duplicate_client_ids(self) -> dict[str, int]:
        """Client order ids the venue accepted more than once (a resend that got through)."""
        seen: dict[str, int] = {}
        for o in self.orders.values():
            seen[o.client_id] = seen.get(o.client_id, 0) + 1
        return {k: n for k, n in seen.items() if n > 1}

    def _find(self, params: dict[str, str]) -> SimOrder | None:
        if "orderId" in params:
            return self.orders.get(int(params["orderId"]))
        if "origClientOrderId" in params:
            return self.by_client.get(params["origClientOrderId"])
        return None

    # ---- matching -----------------------------------------------------------------------
    def _execute(self, o: SimOrder, price: Decimal, qty: Decimal | None = None) -> None:
        base, quote = o.symbol[:-4], o.symbol[-4:]
        qty = o.qty - o.executed if qty is None else qty
        cost = qty * price
        fee = (cost * FEE).quantize(Decimal("0.00000001"))
        if o.side == "BUY":
            self.balances[quote] = self.balances.get(quote, Decimal(0)) - cost - fee
            self.balances[base] = self.balances.get(base, Decimal(0)) + qty
        else:
            self.balances[base] = self.balances.get(base, Decimal(0)) - qty
            self.balances[quote] = self.balances.get(quote, Decimal(0)) + cost - fee
        tid = next(self._trade_ids)
        fill = {"price": f"{price:.8f}", "qty": f"{qty:.8f}", "commission": f"{fee:.8f}",
                "commissionAsset": quote, "tradeId": tid}
        o.fills.append(fill)
        o.executed += qty
        o.quote += cost
        o.status = "FILLED" if o.executed >= o.qty else "PARTIALLY_FILLED"
        o.time = self.now_ms()
        self.trades.append({"symbol": o.symbol, "id": tid, "orderId": o.order_id,
                            "orderListId": -1, "price": fill["price"], "qty": fill["qty"],
                            "quoteQty": f"{cost:.8f}", "commission": fill["commission"],
                            "commissionAsset": quote, "time": o.time,
                            "isBuyer": o.side == "BUY", "isMaker": o.type == "LIMIT",
                            "isBestMatch": True})

    def match(self) -> None:
        for o in self.orders.values():
            if o.status not in OPEN or o.price is None:
                continue
            px = self.price_of(o.symbol)
            if px is None:
                continue
            if o.type == "LIMIT" and ((o.side == "BUY" and px < o.price) or
                                      (o.side == "SELL" and px > o.price)):
                self._execute(o, o.price)
            elif o.type == "STOP_LOSS" and ((o.side == "SELL" and px <= o.price) or
                                            (o.side == "BUY" and px >= o.price)):
                self._execute(o, px)  # triggered: fills at market

    def _free(self, asset: str) -> Decimal:
        held = self.balances.get(asset, Decimal(0))
        for o in self.orders.values():
            if o.status not in OPEN:
                continue
            if o.side == "BUY" and o.symbol.endswith(asset) and o.price is not None:
                held -= (o.qty - o.executed) * o.price
            if o.side == "SELL" and o.symbol.startswith(asset):
                held -= o.qty - o.executed
        return held

    # ---- handlers -----------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        params = await self.verify(request)
        if isinstance(params, web.Response):
            return params
        self.match()
        cid = params.get("newClientOrderId") or f"sim-{next(self._ids)}"
        if cid in self.by_client and self.by_client[cid].status in OPEN:
            return self._err(400, -2010, "Duplicate order sent.")
        if self.reject_next > 0:
            self.reject_next -= 1
            return self._err(400, -2010, "Order would immediately trigger.")
        fault = self.faults.order(str(params.get("type")))
        if fault == "insufficient_funds":
            self.faults.record(fault)
            return self._err(400, -2010, "Account has insufficient balance for requested action.")
        if fault == "reject":
            self.faults.record(fault)
            return self._err(400, -1013, "Filter failure: PERCENT_PRICE_BY_SIDE")
        if self.before_accept is not None:
            await self.before_accept(cid)
        sym, side, kind = params.get("symbol", ""), params.get("side"), params.get("type")
        price_now = self.price_of(sym)
        if price_now is None:
            return self._err(400, -1121, "Invalid symbol.")
        if kind not in ("MARKET", "LIMIT", "STOP_LOSS"):
            return self._err(400, -1116, "Invalid orderType.")
        try:
            qty = Decimal(params["quantity"])
            limit = Decimal(params["price"]) if kind == "LIMIT" else None
            if kind == "STOP_LOSS":
                limit = Decimal(params["stopPrice"])  # kept in .price: the trigger
        except (KeyError, ArithmeticError):
            return self._err(400, -1102, "Mandatory parameter 'quantity' or 'stopPrice' "
                                         "was not sent.")
        ref = limit or price_now
        base, quote = sym[:-4], sym[-4:]
        if (side == "BUY" and qty * ref * (1 + FEE) > self._free(quote)) or \
           (side == "SELL" and qty > self._free(base)):
            return self._err(400, -2010, "Account has insufficient balance for requested action.")
        o = SimOrder(next(self._ids), cid, sym, str(side), str(kind), qty, limit,
                     time=self.now_ms())
        self.orders[o.order_id] = o
        self.by_client[cid] = o
        if kind == "MARKET" and fault == "partial_fill":
            self.faults.record(fault)
            part = (qty * Decimal(repr(self.faults.fraction()))).quantize(Decimal("0.00001"))
            if part > 0:
                self._execute(o, price_now, part)
            o.status = "EXPIRED"  # the rest found no liquidity
        elif kind == "MARKET":
            self._execute(o, price_now)
        else:
            self.match()
        body = dict(o.view(), transactTime=o.time, fills=o.fills)
        if self.execute_then_delay_s > 0:
            await asyncio.sleep(self.execute_then_delay_s)  # executed, answer comes too late
        return web.json_response(body)

    async def query(self, request: web.Request) -> web.Response:
        params = await self.verify(request)
        if isinstance(params, web.Response):
            return params
        self.match()
        o = self._find(params)
        if o is None:
            return self._err(400, -2013, "Order does not exist.")
        return web.json_response(o.view())

    async def cancel(self, request: web.Request) -> web.Response:
        params = await self.verify(request)
        if isinstance(params, web.Response):
            return params
        self.match()
        o = self._find(params)
        if o is not None and o.status in OPEN and self.faults.cancel() == "cancel_race":
            # the order fills an instant before the cancel arrives: to the venue the cancel
            # names an order that is no longer open
            self.faults.record("cancel_race")
            px = self.price_of(o.symbol)
            if px is not None:
                self._execute(o, o.price if o.type == "LIMIT" and o.price else px)
        if o is None or o.status not in OPEN:
            return self._err(400, -2011, "Unknown order sent.")
        o.status = "CANCELED"
        return web.json_response(o.view())

    async def open_orders(self, request: web.Request) -> web.Response:
        params = await self.verify(request)
        if isinstance(params, web.Response):
            return params
        self.match()
        sym = params.get("symbol")
        return web.json_response([o.view() for o in self.orders.values()
                                  if o.status in OPEN and (sym is None or o.symbol == sym)])

    async def my_trades(self, request: web.Request) -> web.Response:
        params = await self.verify(request)
        if isinstance(params, web.Response):
            return params
        sym, oid = params.get("symbol"), params.get("orderId")
        return web.json_response([t for t in self.trades if (sym is None or t["symbol"] == sym)
                                  and (oid is None or str(t["orderId"]) == oid)])

    async def account(self, request: web.Request) -> web.Response:
        params = await self.verify(request)
        if isinstance(params, web.Response):
            return params
        self.match()
        return web.json_response({
            "makerCommission": 10, "takerCommission": 10, "canTrade": True,
            "canWithdraw": False, "canDeposit": False, "updateTime": self.now_ms(),
            "accountType": "SPOT", "permissions": ["SPOT"],
            "balances": [{"asset": a, "free": f"{self._free(a):.8f}",
                          "locked": f"{v - self._free(a):.8f}"} for a, v in self.balances.items()]})

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/api/v3/order", self.create)
        r.add_get("/api/v3/order", self.query)
        r.add_delete("/api/v3/order", self.cancel)
        r.add_get("/api/v3/openOrders", self.open_orders)
        r.add_get("/api/v3/myTrades", self.my_trades)
        r.add_get("/api/v3/account", self.account)
