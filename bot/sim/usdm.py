"""The simulator's USDⓈ-M futures API (``/fapi``), for ccxt's real ``binanceusdm`` class.

Public: ``ping``, ``time``, ``klines`` (the spot simulator's candles under the same ids),
``ticker/24hr`` and ``ticker/price``, and from ``bot/sim/usdm_public.py`` ``exchangeInfo``
(perpetuals), ``premiumIndex`` (mark price and the next funding) and ``fundingRate`` (history).
Private, HMAC-signed like spot: ``order`` (create, query, cancel), ``openOrders``,
``userTrades``, ``v3/account``, ``v3/positionRisk``, ``leverageBracket``, ``leverage``,
``marginType``, ``income`` (funding fees), and the algo service that conditional orders go
through since Binance moved them there (``algoOrder``, ``openAlgoOrders``).

One-way position mode (``positionSide`` BOTH). The wallet moves by realized P&L, commissions
(0.02 % maker, 0.05 % taker: Binance's USDⓈ-M regular tier) and funding. Funding is paid at
each ``funding_interval_ms`` boundary of the market clock on the position held then, at that
moment's mark (here the last price), ``amt * mark * rate``; positive rates make longs pay.

Bodies follow Binance's USDⓈ-M documentation (https://developers.binance.com/docs/derivatives/
usds-margined-futures/): error codes from its "Error Codes" page, shapes from each endpoint's
response example (the same examples ccxt's ``binance.py`` quotes in its parsers).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot.sim.account import SimAccount
from bot.sim.usdm_book import (
    BRACKETS,
    HOUR_MS,
    MAKER,
    TAKER,
    AlgoOrder,
    FutOrder,
    SimPosition,
    q8,
)
from bot.sim.usdm_public import UsdmMarketData

if TYPE_CHECKING:
    from bot.sim.binance import SimBinance

@dataclass
class SimFutures:
    """A USDⓈ-M futures account on the simulated venue. ``auth`` checks keys and signatures
    exactly as the spot account does."""

    venue: SimBinance
    auth: SimAccount
    wallet: Decimal
    funding_rate: Decimal = Decimal("0.0001")
    funding_interval_ms: int = 8 * HOUR_MS
    positions: dict[str, SimPosition] = field(default_factory=dict)
    orders: dict[int, FutOrder] = field(default_factory=dict)
    algos: dict[int, AlgoOrder] = field(default_factory=dict)
    trades: list[dict[str, Any]] = field(default_factory=list)
    income: list[dict[str, Any]] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(7_000_000))
    _tran: Any = field(default_factory=lambda: itertools.count(9_000_000))
    _funded_to: int = -1  # the last funding time settled

    # ---- venue state ----------------------------------------------------------------------
    def _now(self) -> int:
        return self.venue.clock.now_ms()

    def _price(self, sid: str, at: int | None = None) -> Decimal | None:
        if sid not in self.venue.series:
            return None
        rows = self.venue._visible(sid, self._now() if at is None else at)
        return Decimal(rows[-1][4]) if rows else None

    def position(self, sid: str) -> SimPosition:
        return self.positions.setdefault(sid, SimPosition())

    def _funding_times(self, after: int, until: int) -> list[int]:
        step = self.funding_interval_ms
        first = (after // step + 1) * step
        return list(range(first, until + 1, step))

    def settle(self) -> None:
        """Everything that happens at the venue between requests: funding times that passed,
        triggered conditional orders, resting limits that traded."""
        now = self._now()
        if self._funded_to < 0:
            self._funded_to = now  # funding starts with the account
        for t in self._funding_times(self._funded_to, now):
            for sid, p in self.positions.items():
                mark = self._price(sid, t)
                if p.amt == 0 or mark is None:
                    continue
                amount = q8(-p.amt * mark * self.funding_rate)
                self.wallet += amount
                self.income.append({"symbol": sid, "incomeType": "FUNDING_FEE",
                                    "income": f"{amount:f}", "asset": "USDT",
                                    "info": "FUNDING_FEE", "time": t,
                                    "tranId": next(self._tran), "tradeId": ""})
            self._funded_to = t
        for a in self.algos.values():
            px = self._price(a.symbol)
            if a.status != "NEW" or px is None:
                continue
            stop = a.type == "STOP_MARKET"
            up = (a.side == "BUY") == stop  # a buy stop and a sell take-profit trigger above
            if (px >= a.trigger) if up else (px <= a.trigger):
                a.trigger_time = a.update = now
                o = self._new_order(f"{a.client_id}-t", a.symbol, a.side, "MARKET", a.qty,
                                    None, a.reduce_only)
                if self._reduce_refused(o) is None:
                    self._fill(o, px, TAKER)
                    a.status = "TRIGGERED"
                else:
                    o.status = "EXPIRED"  # nothing left to reduce
                    a.status = "EXPIRED"
                a.actual = o
        for o in self.orders.values():
            px = self._price(o.symbol)
            if o.status == "NEW" and o.type == "LIMIT" and px is not None and o.price is not None \
                    and ((o.side == "BUY" and px < o.price) or (o.side == "SELL" and px > o.price)):
                self._fill(o, o.price, MAKER)

    def _new_order(self, cid: str, sid: str, side: str, kind: str, qty: Decimal,
                   price: Decimal | None, reduce_only: bool) -> FutOrder:
        o = FutOrder(next(self._ids), cid, sid, side, kind, qty, price, reduce_only,
                     time=self._now())
        self.orders[o.order_id] = o
        return o

    def _reduce_refused(self, o: FutOrder) -> str | None:
        p = self.position(o.symbol)
        if not o.reduce_only:
            return None
        closing = (p.amt > 0 and o.side == "SELL") or (p.amt < 0 and o.side == "BUY")
        return None if closing and o.qty <= abs(p.amt) else "ReduceOnly Order is rejected."

    def _fill(self, o: FutOrder, price: Decimal, rate: Decimal) -> None:
        """Execute ``o`` whole at ``price``: position, realized P&L, commission, wallet."""
        p = self.position(o.symbol)
        signed = o.qty if o.side == "BUY" else -o.qty
        realized = Decimal(0)
        if p.amt and (p.amt > 0) != (signed > 0):  # reducing (or flipping)
            closed = min(abs(signed), abs(p.amt))
            realized = q8(closed * (price - p.entry) * (1 if p.amt > 0 else -1))
            rest = p.amt + signed
            if rest == 0 or (rest > 0) != (p.amt > 0):
                p.entry = price if rest else Decimal(0)
            p.amt = rest
        else:
            total = abs(p.amt) + o.qty
            p.entry = (abs(p.amt) * p.entry + o.qty * price) / total
            p.amt += signed
        commission = q8(o.qty * price * rate)
        self.wallet += realized - commission
        now = self._now()
        p.updated = o.update = now
        o.executed, o.quote, o.status = o.qty, o.qty * price, "FILLED"
        self.trades.append({
            "buyer": o.side == "BUY", "commission": f"{commission:f}", "commissionAsset": "USDT",
            "id": next(self._tran), "maker": rate == MAKER, "orderId": o.order_id,
            "price": f"{price:f}", "qty": f"{o.qty:f}", "quoteQty": f"{o.qty * price:f}",
            "realizedPnl": f"{realized:f}", "side": o.side, "positionSide": "BOTH",
            "symbol": o.symbol, "time": now})

    def _unrealized(self, sid: str, p: SimPosition) -> Decimal:
        px = self._price(sid) or p.entry
        return q8(p.amt * (px - p.entry))

    def _initial_margin(self) -> Decimal:
        return sum((abs(p.amt) * (self._price(s) or p.entry) / p.leverage
                    for s, p in self.positions.items() if p.amt), Decimal(0))

    def available(self) -> Decimal:
        upnl = sum((self._unrealized(s, p) for s, p in self.positions.items()), Decimal(0))
        return self.wallet + upnl - self._initial_margin()

    # ---- handlers -------------------------------------------------------------------------
    async def _signed(self, request: web.Request) -> dict[str, str] | web.Response:
        params = await self.auth.verify(request)
        if not isinstance(params, web.Response):
            self.settle()
        return params

    def _sid(self, params: dict[str, str]) -> str | web.Response:
        sid = params.get("symbol", "")
        if sid not in self.venue.series:
            return self.auth._err(400, -1121, "Invalid symbol.")
        return sid

    async def create(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        sid = self._sid(params)
        if isinstance(sid, web.Response):
            return sid
        side, kind = params.get("side", ""), params.get("type", "")
        if kind not in ("MARKET", "LIMIT"):
            return self.auth._err(400, -1116, "Invalid orderType.")
        cid = params.get("newClientOrderId") or f"sim-{next(self._ids)}"
        if any(o.client_id == cid and o.status == "NEW" for o in self.orders.values()):
            return self.auth._err(400, -4015, "Client order id is not valid.")
        try:
            qty = Decimal(params["quantity"])
            price = Decimal(params["price"]) if kind == "LIMIT" else None
        except (KeyError, ArithmeticError):
            return self.auth._err(400, -1102, "Mandatory parameter 'quantity' was not sent, "
                                              "was empty/null, or malformed.")
        px = self._price(sid)
        assert px is not None
        o = FutOrder(0, cid, sid, side, kind, qty, price,
                     params.get("reduceOnly", "false").lower() == "true", time=self._now())
        refused = self._reduce_refused(o)
        if refused:
            return self.auth._err(400, -2022, refused)
        if not o.reduce_only:
            p = self.position(sid)
            notional = qty * (price or px)
            if notional / p.leverage + notional * TAKER > self.available():
                return self.auth._err(400, -2019, "Margin is insufficient.")
        o = self._new_order(cid, sid, side, kind, qty, price, o.reduce_only)
        if kind == "MARKET":
            self._fill(o, px, TAKER)
        else:
            self.settle()
        if params.get("newOrderRespType", "ACK") == "ACK":  # the USDⓈ-M default
            ack = o.view()
            ack.update(status="NEW", executedQty="0", cumQty="0", cumQuote="0.00000000",
                       avgPrice="0.00")
            return web.json_response(ack)
        return web.json_response(o.view())

    def _find(self, params: dict[str, str]) -> FutOrder | None:
        if "orderId" in params:
            return self.orders.get(int(params["orderId"]))
        cid = params.get("origClientOrderId")
        found = [o for o in self.orders.values() if o.client_id == cid]
        return found[-1] if found else None

    async def query(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        o = self._find(params)
        if o is None:
            return self.auth._err(400, -2013, "Order does not exist.")
        return web.json_response(o.view())

    async def cancel(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        o = self._find(params)
        if o is None or o.status != "NEW":
            return self.auth._err(400, -2011, "Unknown order sent.")
        o.status, o.update = "CANCELED", self._now()
        return web.json_response(o.view())

    async def open_orders(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        sym = params.get("symbol")
        return web.json_response([o.view() for o in self.orders.values()
                                  if o.status == "NEW" and sym in (None, o.symbol)])

    async def user_trades(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        sym, oid = params.get("symbol"), params.get("orderId")
        return web.json_response([t for t in self.trades if sym in (None, t["symbol"])
                                  and oid in (None, str(t["orderId"]))])

    # ---- the algo service (conditional orders) ----------------------------------------------
    async def algo_create(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        sid = self._sid(params)
        if isinstance(sid, web.Response):
            return sid
        kind = params.get("type", "")
        if params.get("algoType") != "CONDITIONAL" or kind not in ("STOP_MARKET",
                                                                    "TAKE_PROFIT_MARKET"):
            return self.auth._err(400, -1116, "Invalid orderType.")
        try:
            qty, trigger = Decimal(params["quantity"]), Decimal(params["triggerPrice"])
        except (KeyError, ArithmeticError):
            return self.auth._err(400, -1102, "Mandatory parameter 'triggerPrice' was not "
                                              "sent, was empty/null, or malformed.")
        side = params.get("side", "")
        px = self._price(sid)
        assert px is not None
        stop = kind == "STOP_MARKET"
        if (side == "BUY") == stop and px >= trigger or (side == "BUY") != stop and px <= trigger:
            return self.auth._err(400, -2021, "Order would immediately trigger.")
        a = AlgoOrder(next(self._ids), params.get("clientAlgoId") or f"algo-{next(self._ids)}",
                      sid, side, kind, qty, trigger,
                      params.get("reduceOnly", "false").lower() == "true", time=self._now())
        self.algos[a.algo_id] = a
        return web.json_response(a.view())

    def _find_algo(self, params: dict[str, str]) -> AlgoOrder | None:
        if "algoId" in params:
            return self.algos.get(int(params["algoId"]))
        found = [a for a in self.algos.values() if a.client_id == params.get("clientAlgoId")]
        return found[-1] if found else None

    async def algo_query(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        a = self._find_algo(params)
        if a is None:
            return self.auth._err(400, -2013, "Order does not exist.")
        return web.json_response(a.view())

    async def algo_cancel(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        a = self._find_algo(params)
        if a is None or a.status != "NEW":
            return self.auth._err(400, -2011, "Unknown order sent.")
        a.status, a.update = "CANCELED", self._now()
        return web.json_response({"algoId": a.algo_id, "clientAlgoId": a.client_id,
                                  "code": "200", "msg": "success"})

    async def algo_open(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        sym = params.get("symbol")
        return web.json_response([a.view() for a in self.algos.values()
                                  if a.status == "NEW" and sym in (None, a.symbol)])

    # ---- account --------------------------------------------------------------------------
    def _position_view(self, sid: str, p: SimPosition) -> dict[str, Any]:
        mark = self._price(sid) or p.entry
        notional = p.amt * mark
        im = abs(notional) / p.leverage
        return {"symbol": sid, "positionSide": "BOTH", "positionAmt": f"{p.amt:f}",
                "entryPrice": f"{p.entry:.8f}", "breakEvenPrice": f"{p.entry:.8f}",
                "markPrice": f"{mark:.8f}", "unRealizedProfit": f"{self._unrealized(sid, p):f}",
                "liquidationPrice": f"{p.liquidation_price:f}",
                "isolatedMargin": f"{im if p.isolated else 0:.8f}",
                "notional": f"{notional:.8f}", "marginAsset": "USDT",
                "isolatedWallet": f"{im if p.isolated else 0:.8f}",
                "initialMargin": f"{im:.8f}",
                "maintMargin": f"{abs(notional) * Decimal('0.004'):.8f}",
                "positionInitialMargin": f"{im:.8f}", "openOrderInitialMargin": "0",
                "adl": 1, "bidNotional": "0", "askNotional": "0", "updateTime": p.updated,
                "leverage": str(p.leverage),
                "marginType": "isolated" if p.isolated else "cross"}

    async def position_risk(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        sym = params.get("symbol")
        return web.json_response([self._position_view(s, p) for s, p in self.positions.items()
                                  if p.amt and sym in (None, s)])  # v3: held positions only

    async def account(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        upnl = sum((self._unrealized(s, p) for s, p in self.positions.items()), Decimal(0))
        im = self._initial_margin()
        avail = self.wallet + upnl - im
        asset = {"asset": "USDT", "walletBalance": f"{self.wallet:f}",
                 "unrealizedProfit": f"{upnl:f}", "marginBalance": f"{self.wallet + upnl:f}",
                 "maintMargin": "0", "initialMargin": f"{im:.8f}",
                 "positionInitialMargin": f"{im:.8f}", "openOrderInitialMargin": "0",
                 "crossWalletBalance": f"{self.wallet:f}", "crossUnPnl": f"{upnl:f}",
                 "availableBalance": f"{avail:.8f}", "maxWithdrawAmount": f"{avail:.8f}",
                 "updateTime": self._now()}
        return web.json_response({
            "totalInitialMargin": asset["initialMargin"], "totalMaintMargin": "0",
            "totalWalletBalance": asset["walletBalance"],
            "totalUnrealizedProfit": asset["unrealizedProfit"],
            "totalMarginBalance": asset["marginBalance"],
            "totalPositionInitialMargin": asset["initialMargin"],
            "totalOpenOrderInitialMargin": "0",
            "totalCrossWalletBalance": asset["walletBalance"],
            "totalCrossUnPnl": asset["unrealizedProfit"],
            "availableBalance": asset["availableBalance"],
            "maxWithdrawAmount": asset["maxWithdrawAmount"], "assets": [asset],
            "positions": [{"symbol": s, "positionSide": "BOTH", "positionAmt": f"{p.amt:f}",
                           "unrealizedProfit": f"{self._unrealized(s, p):f}",
                           "isolatedMargin": "0", "notional": "0", "isolatedWallet": "0",
                           "initialMargin": "0", "maintMargin": "0", "updateTime": p.updated}
                          for s, p in self.positions.items() if p.amt]})

    async def leverage_bracket(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        rows, floor = [], 0
        for i, (cap, lev, rate, cum) in enumerate(BRACKETS, 1):
            rows.append({"bracket": i, "initialLeverage": lev, "notionalCap": cap,
                         "notionalFloor": floor, "maintMarginRatio": float(rate),
                         "cum": float(cum)})
            floor = cap
        sym = params.get("symbol")
        return web.json_response([{"symbol": s, "notionalCoef": 1.0, "brackets": rows}
                                  for s in self.venue.series if sym in (None, s)])

    async def set_leverage(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        sid = self._sid(params)
        if isinstance(sid, web.Response):
            return sid
        lev = int(params.get("leverage", "0"))
        if not 1 <= lev <= BRACKETS[0][1]:
            return self.auth._err(400, -4028, f"Leverage {lev} is not valid")
        self.position(sid).leverage = lev
        return web.json_response({"leverage": lev, "maxNotionalValue": str(
            max(cap for cap, top, _, _ in BRACKETS if top >= lev)), "symbol": sid})

    async def set_margin_type(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        sid = self._sid(params)
        if isinstance(sid, web.Response):
            return sid
        kind = params.get("marginType", "").upper()
        if kind not in ("ISOLATED", "CROSSED"):
            return self.auth._err(400, -1130, "Data sent for parameter 'marginType' is not "
                                              "valid.")
        p = self.position(sid)
        if p.isolated == (kind == "ISOLATED"):
            return self.auth._err(400, -4046, "No need to change margin type.")
        if p.amt:
            return self.auth._err(400, -4048, "Margin type cannot be changed if there "
                                              "exists position.")
        p.isolated = kind == "ISOLATED"
        return web.json_response({"code": 200, "msg": "success"})

    async def income_history(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        if isinstance(params, web.Response):
            return params
        kind, sym = params.get("incomeType"), params.get("symbol")
        start = int(params.get("startTime", "0"))
        end = int(params.get("endTime", str(2**62)))
        limit = min(int(params.get("limit", "100")), 1000)
        rows = [r for r in self.income if kind in (None, r["incomeType"])
                and sym in (None, r["symbol"]) and start <= r["time"] <= end]
        return web.json_response([dict(r, income=r["income"], time=r["time"])
                                  for r in rows[:limit]])

    def routes(self, app: web.Application) -> None:
        v = self.venue
        public = UsdmMarketData(self)
        r = app.router
        r.add_get("/fapi/v1/ping", v.ping)
        r.add_get("/fapi/v1/time", v.server_time)
        r.add_get("/fapi/v1/exchangeInfo", public.exchange_info)
        r.add_get("/fapi/v1/klines", v.klines)
        r.add_get("/fapi/v1/ticker/24hr", v.ticker_24hr)
        r.add_get("/fapi/v1/ticker/price", v.ticker_price)
        r.add_get("/fapi/v2/ticker/price", v.ticker_price)
        r.add_get("/fapi/v1/premiumIndex", public.premium_index)
        r.add_get("/fapi/v1/fundingRate", public.funding_history)
        r.add_post("/fapi/v1/order", self.create)
        r.add_get("/fapi/v1/order", self.query)
        r.add_delete("/fapi/v1/order", self.cancel)
        r.add_get("/fapi/v1/openOrders", self.open_orders)
        r.add_get("/fapi/v1/userTrades", self.user_trades)
        r.add_post("/fapi/v1/algoOrder", self.algo_create)
        r.add_get("/fapi/v1/algoOrder", self.algo_query)
        r.add_delete("/fapi/v1/algoOrder", self.algo_cancel)
        r.add_get("/fapi/v1/openAlgoOrders", self.algo_open)
        r.add_get("/fapi/v3/account", self.account)
        r.add_get("/fapi/v2/account", self.account)
        r.add_get("/fapi/v3/positionRisk", self.position_risk)
        r.add_get("/fapi/v2/positionRisk", self.position_risk)
        r.add_get("/fapi/v1/leverageBracket", self.leverage_bracket)
        r.add_post("/fapi/v1/leverage", self.set_leverage)
        r.add_post("/fapi/v1/marginType", self.set_margin_type)
        r.add_get("/fapi/v1/income", self.income_history)
