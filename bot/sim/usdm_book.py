"""The records of the simulator's USDⓈ-M account (``bot/sim/usdm.py``): positions, orders,
conditional orders of the algo service, and the static market data the venue publishes, each
shaped as Binance's USDⓈ-M API returns it."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

TAKER = Decimal("0.0005")
MAKER = Decimal("0.0002")
EIGHT = Decimal("0.00000001")
HOUR_MS = 3_600_000
# Binance's leverageBracket for BTCUSDT (first rows): notional cap, max leverage, maintenance
# rate, maintenance amount ("cum")
BRACKETS = ((50_000, 125, "0.004", "0"), (250_000, 100, "0.005", "50"),
            (1_000_000, 50, "0.01", "1300"), (10_000_000, 20, "0.025", "16300"))


def q8(x: Decimal) -> Decimal:
    return x.quantize(EIGHT, rounding=ROUND_HALF_UP)


@dataclass
class SimPosition:
    amt: Decimal = Decimal(0)  # signed: short below zero
    entry: Decimal = Decimal(0)
    leverage: int = 20
    isolated: bool = False  # Binance's default is cross
    updated: int = 0
    # the simulator computes no liquidation price: it reports this one (a test sets it), and
    # Binance's "0" (none) otherwise
    liquidation_price: Decimal = Decimal(0)


@dataclass
class FutOrder:
    order_id: int
    client_id: str
    symbol: str
    side: str
    type: str  # MARKET / LIMIT
    qty: Decimal
    price: Decimal | None
    reduce_only: bool
    status: str = "NEW"
    executed: Decimal = Decimal(0)
    quote: Decimal = Decimal(0)
    time: int = 0
    update: int = 0

    def view(self) -> dict[str, Any]:
        avg = self.quote / self.executed if self.executed else Decimal(0)
        return {"orderId": self.order_id, "symbol": self.symbol, "status": self.status,
                "clientOrderId": self.client_id, "price": f"{self.price or 0:f}",
                "avgPrice": f"{avg:.8f}", "origQty": f"{self.qty:f}",
                "executedQty": f"{self.executed:f}", "cumQty": f"{self.executed:f}",
                "cumQuote": f"{self.quote:.8f}", "timeInForce": "GTC", "type": self.type,
                "reduceOnly": self.reduce_only, "closePosition": False, "side": self.side,
                "positionSide": "BOTH", "stopPrice": "0", "workingType": "CONTRACT_PRICE",
                "priceProtect": False, "origType": self.type, "priceMatch": "NONE",
                "selfTradePreventionMode": "EXPIRE_MAKER", "goodTillDate": 0,
                "time": self.time, "updateTime": self.update or self.time}


@dataclass
class AlgoOrder:
    """A conditional order held by the algo service until its trigger price trades; then it
    places ``actual`` (a MARKET order) and is TRIGGERED."""

    algo_id: int
    client_id: str
    symbol: str
    side: str
    type: str  # STOP_MARKET / TAKE_PROFIT_MARKET
    qty: Decimal
    trigger: Decimal
    reduce_only: bool
    status: str = "NEW"
    actual: FutOrder | None = None
    time: int = 0
    update: int = 0
    trigger_time: int = 0

    def view(self) -> dict[str, Any]:
        a = self.actual
        return {"algoId": self.algo_id, "clientAlgoId": self.client_id,
                "algoType": "CONDITIONAL", "orderType": self.type, "symbol": self.symbol,
                "side": self.side, "positionSide": "BOTH", "timeInForce": "GTC",
                "quantity": f"{self.qty:f}", "algoStatus": self.status,
                "actualOrderId": str(a.order_id) if a else "",
                "actualPrice": f"{a.quote / a.executed:.8f}" if a and a.executed else "0",
                "triggerPrice": f"{self.trigger:f}", "price": "0", "icebergQuantity": None,
                "selfTradePreventionMode": "EXPIRE_MAKER", "workingType": "CONTRACT_PRICE",
                "priceMatch": "NONE", "closePosition": False, "priceProtect": False,
                "reduceOnly": self.reduce_only, "createTime": self.time,
                "updateTime": self.update or self.time, "triggerTime": self.trigger_time,
                "goodTillDate": 0}




def symbol_info(sid: str, sym: str) -> dict[str, Any]:
    """One perpetual of ``exchangeInfo`` (Binance's BTCUSDT filters)."""
    base, quote = sym.split(":")[0].split("/")
    return {
        "symbol": sid, "pair": sid, "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000, "onboardDate": 1569398400000,
        "status": "TRADING", "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000", "baseAsset": base, "quoteAsset": quote,
        "marginAsset": quote, "pricePrecision": 2, "quantityPrecision": 3,
        "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN",
        "underlyingSubType": ["PoW"], "triggerProtect": "0.0500",
        "liquidationFee": "0.012500", "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.10", "maxPrice": "4529764",
             "tickSize": "0.10"},
            {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000",
             "stepSize": "0.001"},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": "120",
             "stepSize": "0.001"},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
            {"filterType": "MIN_NOTIONAL", "notional": "100"},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500",
             "multiplierDown": "0.9500", "multiplierDecimal": "4"}],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT",
                       "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        "permissionSets": ["GRID", "COPY"]}
