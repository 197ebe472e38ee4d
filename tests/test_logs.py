"""JSON log lines carry the run context; secrets never appear, whatever field they hide in."""

from __future__ import annotations

import io
import json

import structlog

from bot.logs import MASK, configure_logging, get_logger, register_secrets


def test_json_lines_with_context_and_masked_secrets() -> None:
    buf = io.StringIO()
    configure_logging("INFO", "json", stream=buf)
    register_secrets(["k3y-ABCDEF-123456", "s3cr3t-XYZ-987654"])
    structlog.contextvars.bind_contextvars(run_id="r-1")
    try:
        log = get_logger("t")
        log.info("order_sent", symbol="BTC/USDT", url="https://x/?apiKey=k3y-ABCDEF-123456",
                 nested={"auth": ["s3cr3t-XYZ-987654"]})
        log.debug("hidden")  # below the level
    finally:
        structlog.contextvars.clear_contextvars()
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) == 1
    [line] = lines
    assert line["run_id"] == "r-1" and line["symbol"] == "BTC/USDT"
    assert line["event"] == "order_sent" and line["level"] == "info"
    text = buf.getvalue()
    assert "k3y-ABCDEF-123456" not in text and "s3cr3t-XYZ-987654" not in text
    assert MASK in line["url"] and line["nested"]["auth"] == [MASK]


async def test_a_venue_error_is_stored_without_the_secret_it_quotes() -> None:
    """Issue 17: the venue's error text is stored with the refused order (and logged). A
    venue that echoes the API key back must not put it in the ledger."""
    from decimal import Decimal

    from bot.clock import SimulatedClock
    from bot.desk import OrderDesk
    from bot.domain import OrderIntent, OrderStatus, Side
    from bot.errors import OrderRejected
    from bot.logs import register_secrets
    from bot.metrics import RunStats
    from bot.portfolio import Portfolio

    key = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
    register_secrets([key])

    class Refusing:
        async def submit(self, order: object) -> object:
            raise OrderRejected('binance {"code":-1013,"msg":"Filter failure: LOT_SIZE for key '
                               f'{key}"}}')

    desk = OrderDesk("run", "acct", Refusing(), Portfolio("acct", Decimal(1000), "USDT"),  # type: ignore[arg-type]
                     SimulatedClock(1000), RunStats("1h", Decimal(1000)))
    order = desk.new_order(OrderIntent("BTC/USDT", Side.BUY, "test", 0, "v"), Decimal("0.1"))
    update = await desk.send(order)
    assert update.order.status is OrderStatus.REJECTED
    assert key not in (update.order.status_reason or "")
    assert "LOT_SIZE" in (update.order.status_reason or "")  # the reason itself survives
