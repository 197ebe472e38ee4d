"""The public market data of the simulator's USDⓈ-M API (``/fapi``): ``exchangeInfo``
(perpetuals), ``premiumIndex`` (the mark price and the next funding time) and ``fundingRate``
(history), over a futures account's venue, prices and funding schedule (``bot/sim/usdm.py``).
Shapes from each endpoint's response example in Binance's USDⓈ-M documentation
(https://developers.binance.com/docs/derivatives/usds-margined-futures/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from bot.sim.usdm_book import symbol_info

if TYPE_CHECKING:
    from bot.sim.usdm import SimFutures


@dataclass
class UsdmMarketData:
    """The public endpoints, reading the futures account ``fut`` they are served beside."""

    fut: SimFutures

    async def exchange_info(self, request: web.Request) -> web.Response:
        syms = [symbol_info(sid, sym) for sid, sym in self.fut.venue.symbols.items()]
        return web.json_response({
            "timezone": "UTC", "serverTime": self.fut.venue.clock.server_ms(),
            "futuresType": "U_MARGINED",
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE",
                            "intervalNum": 1, "limit": 2400}],
            "exchangeFilters": [], "assets": [{"asset": "USDT", "marginAvailable": True,
                                               "autoAssetExchange": "-10000"}],
            "symbols": syms})

    def _next_funding(self) -> int:
        step = self.fut.funding_interval_ms
        return (self.fut._now() // step + 1) * step

    async def premium_index(self, request: web.Request) -> web.Response:
        self.fut.settle()
        sym = request.query.get("symbol")
        if sym is not None and sym not in self.fut.venue.series:
            return self.fut.auth._err(400, -1121, "Invalid symbol.")
        out = []
        for sid in ([sym] if sym else list(self.fut.venue.series)):
            px = self.fut._price(sid)
            if px is None:
                continue
            out.append({"symbol": sid, "markPrice": f"{px:.8f}", "indexPrice": f"{px:.8f}",
                        "estimatedSettlePrice": f"{px:.8f}",
                        "lastFundingRate": f"{self.fut.funding_rate:.8f}",
                        "interestRate": "0.00010000", "nextFundingTime": self._next_funding(),
                        "time": self.fut._now()})
        return web.json_response(out[0] if sym else out)

    async def funding_history(self, request: web.Request) -> web.Response:
        q = request.query
        sym = q.get("symbol")
        start = int(q.get("startTime", "0"))
        limit = min(int(q.get("limit", "100")), 1000)
        origin = self.fut.venue.clock.origin_ms - 30 * self.fut.funding_interval_ms
        rows = []
        for sid in ([sym] if sym else list(self.fut.venue.series)):
            for t in self.fut._funding_times(max(start - 1, origin), self.fut._now()):
                px = self.fut._price(sid, t)
                if px is not None:
                    rows.append({"symbol": sid, "fundingTime": t,
                                 "fundingRate": f"{self.fut.funding_rate:.8f}",
                                 "markPrice": f"{px:.8f}"})
        return web.json_response(rows[:limit])
