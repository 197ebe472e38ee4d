"""Client ids of protective stops (``OrderDesk.stop_tag``).

A client id is derived from the decision (account, symbol, candle, side and tag), so that a
retry can never send a second order for one decision. A protective stop cancelled and placed
again at the same price within one candle step (an exit the venue refused puts the stop back,
``RiskManager.reprotect``) is a second order, and must not reuse the first one's id: the
ledger keeps the first as cancelled and never rewrites a finished order, so the new stop's
fills would land on a row that says "cancelled", while the venue (which accepts a client id
again once its order is closed) works the new one."""

from __future__ import annotations

from decimal import Decimal

from bot.clock import SimulatedClock
from bot.desk import OrderDesk, client_order_id, exit_intent
from bot.domain import OrderType, Position
from bot.metrics import RunStats
from bot.portfolio import Portfolio


def _desk() -> OrderDesk:
    return OrderDesk("run", "acct", None, Portfolio("acct", Decimal(1000), "USDT"),  # type: ignore[arg-type]
                     SimulatedClock(1000), RunStats("1h", Decimal(1000)))


def test_a_stop_placed_again_in_the_same_step_gets_a_client_id_of_its_own() -> None:
    desk = _desk()
    pos = Position("acct", "BTC/USDT", Decimal("0.5"), Decimal("100"))
    stop = Decimal("95.5")

    def placed(ts: int) -> str:
        intent = exit_intent(pos, ts, "protective stop", "v1", OrderType.STOP, stop)
        return desk.new_order(intent, abs(pos.quantity),
                              desk.stop_tag(pos.symbol, ts, stop)).client_order_id

    first, again, third = placed(3_600_000), placed(3_600_000), placed(3_600_000)
    assert len({first, again, third}) == 3
    # the first stop of a step keeps the id a restart would derive for it
    assert first == client_order_id("acct", "BTC/USDT", 3_600_000, f"sell:stop{stop}")
    # a later step starts afresh; another symbol never shares a count
    assert placed(7_200_000) == client_order_id("acct", "BTC/USDT", 7_200_000, f"sell:stop{stop}")
    assert desk.stop_tag("ETH/USDT", 7_200_000, stop) == f"stop{stop}"
