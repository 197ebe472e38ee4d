"""Prometheus metrics of a running bot (``/metrics`` on ``metrics.host:metrics.port``).

An ``Observer`` (``bot/ports.py``) the engine reports to after the fact: decision and
inference latency, candles, feed lag and mode, orders by status, fills, equity and
drawdown, the trading state, every breaker, venue errors by ccxt class, ledger commit
latency, and the active ensemble. Its own registry, so two engines in one process (tests)
never share counters. The HTTP server is prometheus-client's, on a thread of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

from bot.domain import BreakerReading, FeedState, UnitOfWork

STATES = ("ACTIVE", "REDUCING", "HALTED")
FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class PrometheusObserver:
    def __init__(self, account: str, device: str, ensemble: str | None) -> None:
        self.registry = CollectorRegistry()
        r, a = self.registry, ["account"]
        self.account, self.device = account, device
        self.decision = Histogram("stackbot_decision_seconds", "Candle batch to committed "
                                  "decision", a, buckets=FAST, registry=r)
        self.inference = Histogram("stackbot_inference_seconds", "Signal source time per "
                                   "batch, by device", [*a, "device"], buckets=FAST, registry=r)
        self.commit = Histogram("stackbot_ledger_commit_seconds", "Ledger commit latency", a,
                                buckets=FAST, registry=r)
        self.candles = Counter("stackbot_candles_processed", "Closed candles processed", a,
                               registry=r)
        self.lag = Gauge("stackbot_feed_lag_seconds", "Wall clock minus the newest candle's "
                         "close when it was processed", a, registry=r)
        self.feed_mode = Gauge("stackbot_feed_mode", "1 for the feed's current transport "
                               "(ws or rest)", [*a, "mode"], registry=r)
        self.orders = Counter("stackbot_orders", "Order updates committed, by status",
                              [*a, "status"], registry=r)
        self.fills = Counter("stackbot_fills", "Fills booked", a, registry=r)
        self.equity = Gauge("stackbot_equity", "Equity in the quote currency", a, registry=r)
        self.drawdown = Gauge("stackbot_drawdown", "Drawdown from the running peak (share)",
                              a, registry=r)
        self.state = Gauge("stackbot_trading_state", "1 for the current trading state",
                           [*a, "state"], registry=r)
        self.breaker = Gauge("stackbot_breaker_reading", "Each breaker's reading",
                             [*a, "breaker", "unit"], registry=r)
        self.limit = Gauge("stackbot_breaker_limit", "Each breaker's limit",
                           [*a, "breaker", "unit"], registry=r)
        self.tripped = Gauge("stackbot_breaker_tripped", "1 where the reading is at or past "
                             "the limit", [*a, "breaker"], registry=r)
        self.venue_errors = Counter("stackbot_venue_errors", "Venue errors by ccxt class",
                                    [*a, "ccxt_class"], registry=r)
        self.heartbeat = Gauge("stackbot_heartbeat_timestamp_seconds", "Unix time of the "
                               "engine loop's last commit (the container's healthcheck)", a,
                               registry=r)
        self.ensemble = Info("stackbot_ensemble", "The model version scoring signals", a,
                             registry=r)
        self.ensemble.labels(account).info({"version": ensemble or "none"})
        self.feed_mode.labels(account, "ws").set(0)
        self.feed_mode.labels(account, "rest").set(0)
        self.venue_errors.labels(account, "none")  # the series exists before the first error
        self.heartbeat.labels(account).set(time.time())
        self._peak = 0.0
        self._server: Any = None

    def serve(self, host: str, port: int) -> None:
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def set_feed_mode(self, mode: str) -> None:
        for m in ("ws", "rest"):
            self.feed_mode.labels(self.account, m).set(1 if m == mode else 0)

    def set_ensemble(self, version: str) -> None:
        self.ensemble.labels(self.account).info({"version": version})

    # ---- Observer -----------------------------------------------------------------------
    def on_step(self, decision_s: float, inference_s: float, lag_s: float,
                candles: int) -> None:
        a = self.account
        self.decision.labels(a).observe(decision_s)
        self.inference.labels(a, self.device).observe(inference_s)
        self.candles.labels(a).inc(candles)
        self.lag.labels(a).set(lag_s)

    def on_commit(self, unit: UnitOfWork, seconds: float) -> None:
        a = self.account
        self.heartbeat.labels(a).set(time.time())
        self.commit.labels(a).observe(seconds)
        for o in unit.orders.values():
            self.orders.labels(a, o.status.value).inc()
        if unit.fills:
            self.fills.labels(a).inc(len(unit.fills))
        for e in unit.equity:
            eq = float(e.equity)
            self._peak = max(self._peak, eq)
            self.equity.labels(a).set(eq)
            self.drawdown.labels(a).set((self._peak - eq) / self._peak if self._peak else 0.0)
        for ev in unit.audit:
            if ev.kind == f"feed.{FeedState.FALLBACK.value}":
                self.set_feed_mode("rest")
            elif ev.kind == f"feed.{FeedState.WS_RESTORED.value}":
                self.set_feed_mode("ws")
            elif ev.kind == "retrain.finished" and "now_active" in ev.payload:
                self.set_ensemble(str(ev.payload["now_active"]))

    def on_venue_error(self, ccxt_class: str) -> None:
        self.venue_errors.labels(self.account, ccxt_class).inc()

    def on_risk(self, state: str, readings: Callable[[], Sequence[BreakerReading]]) -> None:
        a = self.account
        for s in STATES:
            self.state.labels(a, s).set(1 if s == state else 0)
        for b in readings():
            self.breaker.labels(a, b.name, b.unit).set(b.reading)
            self.limit.labels(a, b.name, b.unit).set(b.limit)
            self.tripped.labels(a, b.name).set(1 if b.limit and b.reading >= b.limit else 0)
