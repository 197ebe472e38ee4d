"""What the bus publishes: every committed unit of work, mapped to its topics. Only committed
changes are published, so telemetry never shows what the ledger does not hold."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Protocol

from bot.domain import UnitOfWork


class Publisher(Protocol):
    def publish(self, sub: str, payload: dict[str, Any], retain: bool = False) -> None: ...


_SKIP_EVENTS = ("fill.booked", "position.changed")  # carried by the fills topic already


def publish_unit(bus: Publisher, unit: UnitOfWork) -> None:
    for _, _, s in unit.signals:
        bus.publish("signals", {"symbol": s.symbol, "ts": s.ts, "p_up": s.p_up,
                                "expected_return": s.expected_return, "dispersion": s.dispersion,
                                "regime": s.regime, "model_version": s.model_version})
    for o in unit.orders.values():
        bus.publish("orders", {
            "client_order_id": o.client_order_id, "symbol": o.symbol, "side": o.side.value,
            "type": o.order_type.value, "quantity": str(o.quantity), "status": o.status.value,
            "filled": str(o.filled_qty), "avg_price": str(o.avg_fill_price),
            "stop_price": str(o.stop_price) if o.stop_price is not None else None,
            "reason": o.status_reason or o.reason, "model_version": o.model_version,
            "ts": o.updated_ts})
    for f in unit.fills:
        d = asdict(f)
        d.update(side=f.side.value, quantity=str(f.quantity), price=str(f.price), fee=str(f.fee))
        bus.publish("fills", d)
    for e in unit.equity:
        bus.publish("equity", {"ts": e.ts, "cash": str(e.cash),
                               "positions_value": str(e.positions_value),
                               "equity": str(e.equity)})
    for account, (state, ts) in unit.risk_state.items():
        bus.publish("risk/state", {"account": account, "ts": ts, **state.snapshot()},
                    retain=True)
    for ev in unit.audit:
        if ev.kind not in _SKIP_EVENTS:
            bus.publish("events", {"kind": ev.kind, "entity": ev.entity, "id": ev.entity_id,
                                   "ts": ev.ts, **dict(ev.payload)})
