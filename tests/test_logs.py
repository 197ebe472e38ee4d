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
