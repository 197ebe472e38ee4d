"""A loopback server speaking the Binance spot REST API, so the real ccxt ``binance`` class can
be exercised without the internet: ``/api/v3/{ping,time,exchangeInfo,klines,ticker/24hr,
ticker/price}``.

Candles are replayed on an accelerated clock: exchange time runs ``speed`` times faster than
wall time from ``origin``. ``klines`` returns closed candles and the one still forming, with
partial values, exactly as the real venue does, so a client that trades a forming candle is
caught out.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import WSMsgType, web

from bot.domain import Candle, timeframe_ms
from bot.sim.account import SimAccount
from bot.sim.faults import FaultPlan
from bot.sim.http_faults import fault_answer
from bot.sim.usdm import SimFutures

INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")


def synthetic_candles(symbol: str, timeframe: str, start_ms: int, count: int, seed: int = 7,
                      price: float = 30_000.0, vol: float = 0.004) -> list[Candle]:
    """A seeded random walk with trends, so EMA rules trade; for tests and demos."""
    rng = random.Random(f"{symbol}-{seed}")
    step = timeframe_ms(timeframe)
    out = []
    drift = 0.0
    for i in range(count):
        if i % 40 == 0:
            drift = rng.choice((-1, 1)) * vol * 0.3
        o = price
        c = o * math.exp(drift + rng.gauss(0, vol))
        h = max(o, c) * (1 + abs(rng.gauss(0, vol / 2)))
        low = min(o, c) * (1 - abs(rng.gauss(0, vol / 2)))
        out.append(Candle(symbol, timeframe, start_ms + i * step, round(o, 2), round(h, 2),
                          round(low, 2), round(c, 2), round(rng.uniform(5, 50), 5)))
        price = c
    return out


@dataclass
class SimClock:
    """Two clocks. The market clock (``now_ms``) drives the candles: ``origin`` at start,
    running ``speed`` times faster than wall time. The server clock (``server_ms``) is what
    ``/api/v3/time`` reports and what signed requests are checked against: it runs at wall
    speed from the same origin, plus ``skew_ms`` (the ``clock_skew`` fault moves it). At
    ``speed`` 1 the two agree, as on the real venue."""

    origin_ms: int
    speed: float = 1.0
    _t0: float = field(default_factory=time.monotonic)
    skew_ms: int = 0
    frozen_ms: int | None = None  # set by ``freeze``: the market stands still

    def now_ms(self) -> int:
        if self.frozen_ms is not None:
            return self.frozen_ms
        return self.origin_ms + int((time.monotonic() - self._t0) * 1000 * self.speed)

    def freeze(self) -> None:
        """Stop the market clock where it is: no new candle, no new price, so no resting order
        can trigger after the orders already triggerable have been matched."""
        self.frozen_ms = self.now_ms()

    def server_ms(self) -> int:
        return self.origin_ms + int((time.monotonic() - self._t0) * 1000) + self.skew_ms


def _binance_id(symbol: str) -> str:
    """``BTC/USDT`` and the perpetual ``BTC/USDT:USDT`` are both ``BTCUSDT`` at Binance."""
    return symbol.split(":")[0].replace("/", "")


class SimBinance:
    """State of the simulated venue; ``app()`` builds the aiohttp application over it."""

    def __init__(self, candles: Mapping[str, Sequence[Candle]], clock: SimClock) -> None:
        self.clock = clock
        self.series = {_binance_id(s): list(c) for s, c in candles.items()}
        self.symbols = {_binance_id(s): s for s in candles}
        self._ts = {k: [c.ts for c in v] for k, v in self.series.items()}
        self.requests: dict[str, int] = {}
        self.ws_push_s = 0.05  # wall seconds between kline pushes
        self.ws_silent = False  # fault: keep sockets open but send nothing
        self.ws_enabled = True  # False: a venue (or proxy) with REST only, ws answers 404
        self._sockets: set[web.WebSocketResponse] = set()
        self.account: SimAccount | None = None
        self.futures: SimFutures | None = None
        self.faults = FaultPlan()
        self.on_request: Any = None  # callback(method, path) before anything else happens

    def open_account(self, api_key: str, secret: str,
                     balances: Mapping[str, Decimal | str]) -> SimAccount:
        """Enable the signed private API for one key pair with these balances."""
        cash = {k: Decimal(str(v)) for k, v in balances.items()}
        self.account = SimAccount(api_key, secret, cash,
                                  self.price, self.clock.now_ms, self.faults,
                                  self.clock.server_ms)
        return self.account

    def open_futures(self, api_key: str, secret: str, wallet: Decimal | str,
                     funding_rate: Decimal | str = "0.0001",
                     funding_interval_ms: int = 8 * 3_600_000) -> SimFutures:
        """Enable the USDⓈ-M futures API (``/fapi``, ``bot/sim/usdm.py``) for one key pair
        with ``wallet`` USDT."""
        auth = SimAccount(api_key, secret, {}, self.price, self.clock.now_ms, self.faults,
                          self.clock.server_ms)
        self.futures = SimFutures(self, auth, Decimal(str(wallet)), Decimal(str(funding_rate)),
                                  funding_interval_ms)
        return self.futures

    def price(self, sid: str) -> Decimal | None:
        """The last traded price: the forming candle's current close."""
        if sid not in self.series:
            return None
        rows = self._visible(sid, self.clock.now_ms())
        return Decimal(rows[-1][4]) if rows else None

    # ---- helpers ------------------------------------------------------------------------
    def _error(self, status: int, code: int, msg: str) -> web.Response:
        return web.json_response({"code": code, "msg": msg}, status=status)

    def _visible(self, sid: str, now: int) -> list[list[Any]]:
        """Rows up to ``now``; the last one is partial while it is forming."""
        series, stamps = self.series[sid], self._ts[sid]
        n = bisect.bisect_right(stamps, now)
        return [self._kline(c, now) for c in series[:n]]

    @staticmethod
    def _kline(c: Candle, now: int) -> list[Any]:
        step = timeframe_ms(c.timeframe)
        o, h, low, cl, v = c.open, c.high, c.low, c.close, c.volume
        if now < c.ts + step:  # forming: only part of the move has happened
            f = max(0.0, (now - c.ts) / step)
            cl = round(o + f * (cl - o), 8)
            h, low, v = max(o, cl), min(o, cl), round(v * f, 8)
        return [c.ts, f"{o:.8f}", f"{h:.8f}", f"{low:.8f}", f"{cl:.8f}", f"{v:.8f}",
                c.ts + step - 1, f"{v * cl:.8f}", 100, f"{v / 2:.8f}", f"{v * cl / 2:.8f}", "0"]

    # ---- handlers -----------------------------------------------------------------------
    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def server_time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self.clock.server_ms()})

    async def exchange_info(self, request: web.Request) -> web.Response:
        symbols = [self._symbol_info(sid, sym) for sid, sym in self.symbols.items()]
        return web.json_response({
            "timezone": "UTC", "serverTime": self.clock.server_ms(), "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                 "limit": 6000}], "exchangeFilters": [], "symbols": symbols})

    @staticmethod
    def _symbol_info(sid: str, symbol: str) -> dict[str, Any]:
        base, quote = symbol.split(":")[0].split("/")
        return {
            "symbol": sid, "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8,
            "quoteAsset": quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT",
                           "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": True,
            "cancelReplaceAllowed": True, "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": "0.01000000",
                 "maxPrice": "1000000.00000000", "tickSize": "0.01000000"},
                {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000",
                 "stepSize": "0.00001000"},
                {"filterType": "NOTIONAL", "minNotional": "5.00000000",
                 "applyMinToMarket": True, "maxNotional": "9000000.00000000",
                 "applyMaxToMarket": False, "avgPriceMins": 5},
                {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000",
                 "maxQty": "100.00000000", "stepSize": "0.00000000"},
            ],
            "permissions": [], "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }

    async def klines(self, request: web.Request) -> web.Response:
        q = request.query
        sid = q.get("symbol", "")
        if sid not in self.series:
            return self._error(400, -1121, "Invalid symbol.")
        interval = q.get("interval")
        tf = self.series[sid][0].timeframe if self.series[sid] else None
        if interval not in INTERVALS:
            return self._error(400, -1120, "Invalid interval.")
        if interval != tf:
            return self._error(400, -1120, f"this simulator serves {sid} at {tf} only")
        try:
            limit = min(int(q.get("limit", 500)), 1000)
            start = int(q["startTime"]) if "startTime" in q else None
            end = int(q["endTime"]) if "endTime" in q else None
        except ValueError:
            return self._error(400, -1100, "Illegal characters found in a parameter.")
        now = self.clock.now_ms()
        rows = self._visible(sid, now)
        if start is not None:
            rows = [r for r in rows if r[0] >= start][:limit]
        if end is not None:
            rows = [r for r in rows if r[0] <= end]
        if start is None:
            rows = rows[-limit:]
        return web.json_response(rows)

    async def ticker_24hr(self, request: web.Request) -> web.Response:
        sid = request.query.get("symbol")
        ids = [sid] if sid else list(self.series)
        out = []
        now = self.clock.now_ms()
        for i in ids:
            if i not in self.series:
                return self._error(400, -1121, "Invalid symbol.")
            rows = self._visible(i, now)
            if not rows:
                continue
            last, first = rows[-1], rows[max(0, len(rows) - 24)]
            out.append({
                "symbol": i, "priceChange": f"{float(last[4]) - float(first[1]):.8f}",
                "priceChangePercent": f"{(float(last[4]) / float(first[1]) - 1) * 100:.3f}",
                "weightedAvgPrice": last[4],
                "prevClosePrice": rows[-2][4] if len(rows) > 1 else last[1],
                "lastPrice": last[4], "lastQty": "0.1", "bidPrice": last[4], "bidQty": "1",
                "askPrice": last[4], "askQty": "1", "openPrice": first[1],
                "highPrice": max(r[2] for r in rows[-24:]),
                "lowPrice": min(r[3] for r in rows[-24:]),
                "volume": "100", "quoteVolume": "1000", "openTime": first[0], "closeTime": now,
                "firstId": 1, "lastId": 2, "count": 2})
        return web.json_response(out[0] if sid else out)

    async def ticker_price(self, request: web.Request) -> web.Response:
        sid = request.query.get("symbol")
        if sid is not None and sid not in self.series:
            return self._error(400, -1121, "Invalid symbol.")
        now = self.clock.now_ms()
        prices = [{"symbol": i, "price": self._visible(i, now)[-1][4]}
                  for i in ([sid] if sid else self.series) if self._visible(i, now)]
        return web.json_response(prices[0] if sid else prices)

    # ---- websocket kline streams ----------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        import asyncio
        import json

        if not self.ws_enabled:
            raise web.HTTPNotFound(text="websocket streams are not served here")
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        self._sockets.add(ws)
        streams: set[str] = set()
        pusher = asyncio.create_task(self._push(ws, streams))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                req = json.loads(msg.data)
                method, params = req.get("method"), req.get("params") or []
                if method == "SUBSCRIBE":
                    bad = [p for p in params if p.split("@")[0].upper() not in self.series]
                    if bad:
                        await ws.send_json({"error": {"code": 2, "msg": f"Invalid request: {bad}"},
                                            "id": req.get("id")})
                        continue
                    streams.update(params)
                elif method == "UNSUBSCRIBE":
                    streams.difference_update(params)
                await ws.send_json({"result": None, "id": req.get("id")})
        finally:
            pusher.cancel()
            self._sockets.discard(ws)
        return ws

    async def _push(self, ws: web.WebSocketResponse, streams: set[str]) -> None:
        import asyncio

        last_sent: dict[str, int] = {}
        held: list[dict[str, Any]] = []  # "late" klines, sent after newer ones
        while not ws.closed:
            await asyncio.sleep(self.ws_push_s)
            if self.ws_silent:
                continue
            now = self.clock.now_ms()
            for stream in list(streams):
                sid = stream.split("@")[0].upper()
                rows = self._visible(sid, now)
                if not rows:
                    continue
                prev = last_sent.get(stream)
                out: list[dict[str, Any]] = []
                # a candle that closed since the last push goes out final (x = true) first
                if prev is not None and prev < rows[-1][0]:
                    out += [self._kline_event(sid, r, True) for r in rows
                            if prev <= r[0] < rows[-1][0]]
                out.append(self._kline_event(sid, rows[-1], False))
                last_sent[stream] = rows[-1][0]
                disturbed = self._disturb(out, held)
                if disturbed is None:
                    await ws.close()
                    return
                out = disturbed
                for event in out:
                    await ws.send_json(event)

    def _disturb(self, out: list[dict[str, Any]],
                 held: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Apply a websocket fault to one push; None means drop the socket."""
        late, held[:] = list(held), []
        kind = self.faults.ws()
        closed = [e for e in out if e["k"]["x"]]
        if kind == "ws_drop":
            self.faults.record(kind)
            return None
        if kind == "duplicate":
            out = out + out[:1]
        elif kind == "late" and closed:
            held.append(closed[0])  # this closed kline arrives after newer ones
            out = [e for e in out if e is not closed[0]]
        elif kind == "out_of_order" and len(out) > 1:
            out = list(reversed(out))
        elif kind is not None:
            kind = None  # nothing to disturb in this push
        if kind is not None:
            self.faults.record(kind)
        return out + late

    def _kline_event(self, sid: str, r: list[Any], closed: bool) -> dict[str, Any]:
        tf = self.series[sid][0].timeframe
        return {"e": "kline", "E": self.clock.now_ms(), "s": sid, "k": {
            "t": r[0], "T": r[6], "s": sid, "i": tf, "f": 1, "L": 2, "o": r[1], "c": r[4],
            "h": r[2], "l": r[3], "v": r[5], "n": 10, "x": closed, "q": r[7], "V": r[9],
            "Q": r[10], "B": "0"}}

    async def drop_websockets(self) -> int:
        """Fault: close every websocket (clients must reconnect)."""
        socks = list(self._sockets)
        for ws in socks:
            await ws.close()
        return len(socks)

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests[request.path] = self.requests.get(request.path, 0) + 1
        if self.on_request is not None:
            self.on_request(request.method, request.path)
        if request.path.startswith("/ws") or request.path.startswith("/stream"):
            return await handler(request)
        kind = self.faults.http(request.method, request.path)
        if kind is None:
            return await handler(request)
        return await fault_answer(kind, request, handler, self.faults, self.clock)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._count])
        r = app.router
        r.add_get("/api/v3/ping", self.ping)
        r.add_get("/api/v3/time", self.server_time)
        r.add_get("/api/v3/exchangeInfo", self.exchange_info)
        r.add_get("/api/v3/klines", self.klines)
        r.add_get("/api/v3/ticker/24hr", self.ticker_24hr)
        r.add_get("/api/v3/ticker/price", self.ticker_price)
        r.add_get("/ws", self.websocket)
        r.add_get("/ws/{stream}", self.websocket)
        r.add_get("/stream/ws/{stream}", self.websocket)
        # USDⓈ-M futures streams, by Binance's routing of 2026: /public (book), /market
        # (klines, mark price) and /private (user data), as ccxt's binanceusdm connects
        r.add_get("/market/ws/{stream}", self.websocket)
        r.add_get("/public/ws/{stream}", self.websocket)
        if self.account is not None:
            self.account.routes(app)
        if self.futures is not None:
            self.futures.routes(app)
        return app


async def start_server(sim: SimBinance, host: str = "127.0.0.1",
                       port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve ``sim`` on loopback; returns the runner (to ``cleanup()``) and the bound port."""
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    bound = server.sockets[0].getsockname()[1]
    return runner, int(bound)


def build(symbols: Sequence[str], timeframe: str, speed: float, history: int, seed: int,
          future: int = 100_000) -> SimBinance:
    """A simulator whose clock starts now, with ``history`` candles before it."""
    step = timeframe_ms(timeframe)
    first = int(time.time() * 1000) // step * step - history * step
    candles = {s: synthetic_candles(s, timeframe, first, history + future, seed)
               for s in symbols}
    # the server clock starts at wall time, as a venue's does (taken after the slow part)
    return SimBinance(candles, SimClock(int(time.time() * 1000), speed))


def replay(candles: Mapping[str, Sequence[Candle]], speed: float, history: int) -> SimBinance:
    """A simulator over recorded candles: its clock starts ``history`` candles into them."""
    first = min(c[0].ts for c in candles.values())
    step = timeframe_ms(next(iter(candles.values()))[0].timeframe)
    return SimBinance(candles, SimClock(first + history * step, speed))


async def serve_forever(port: int, symbols: Sequence[str], timeframe: str, speed: float,
                        history: int, seed: int,
                        account: tuple[str, str, Mapping[str, Decimal]] | None = None,
                        faults: FaultPlan | None = None,
                        recorded: Mapping[str, Sequence[Candle]] | None = None,
                        websocket: bool = True) -> None:
    import asyncio

    sim = (replay(recorded, speed, history) if recorded
           else build(symbols, timeframe, speed, history, seed))
    symbols = list(sim.symbols.values())
    if faults is not None:
        sim.faults = faults
    sim.ws_enabled = websocket
    if account is not None:
        sim.open_account(*account)
        # the same key trades USDⓈ-M perpetuals (/fapi) on a futures wallet of its USDT
        sim.open_futures(account[0], account[1], account[2].get("USDT", Decimal(0)))
    runner, bound = await start_server(sim, port=port)
    print(f"simulated binance on http://127.0.0.1:{bound} ({', '.join(symbols)} {timeframe}, "
          f"x{speed}; account {'on (spot and USDⓈ-M futures)' if account else 'off'}; websocket "
          f"{'on' if websocket else 'off'}; {len(sim.faults.rules)} fault rule(s))", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
