"""Prometheus ``/metrics`` of a paper bot trading on the simulator: every metric the operator
console issue names is exported, the values move as the bot trades, the healthcheck reads
the heartbeat, and every metric the provisioned Grafana dashboard queries is one of them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.console_helpers import free_port, query, wait_for_simulator

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "stackbot.json"
REQUIRED = [  # issue 13, item 5, in its order
    "stackbot_decision_seconds_bucket", "stackbot_candles_processed_total",
    "stackbot_feed_lag_seconds", "stackbot_feed_mode", "stackbot_orders_total",
    "stackbot_fills_total", "stackbot_equity", "stackbot_drawdown", "stackbot_trading_state",
    "stackbot_breaker_reading", "stackbot_breaker_limit", "stackbot_breaker_tripped",
    "stackbot_venue_errors_total", "stackbot_ledger_commit_seconds_bucket",
    "stackbot_inference_seconds_bucket", "stackbot_ensemble_info",
    "stackbot_heartbeat_timestamp_seconds",
]


def _samples(text: str) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        head, value = line.rsplit(" ", 1)
        name = head.split("{", 1)[0]
        out.setdefault(name, []).append((head, float(value)))
    return out


def _scrape(url: str) -> dict[str, list[tuple[str, float]]]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return _samples(r.read().decode())


@pytest.fixture(scope="module")
def bot(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    import os

    root = tmp_path_factory.mktemp("metrics")
    sim_port, metrics_port = free_port(), free_port()
    env = dict(os.environ, STACKBOT_LOG_FORMAT="json", STACKBOT_METRICS_ENABLED="true",
               STACKBOT_METRICS_PORT=str(metrics_port))
    logs = root / "out.log"
    procs = []
    with logs.open("ab") as sink:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bot", "sim-exchange", "--port", str(sim_port), "--symbols",
             "BTC/USDT,ETH/USDT", "--speed", "60", "--history", "300", "--seed", "21"],
            stdout=sink, stderr=sink, env=env))
        wait_for_simulator(sim_port, [logs])
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bot", "run", "--mode", "paper", "--exchange", "binance",
             "--symbols", "BTC/USDT,ETH/USDT", "--timeframe", "1m", "--exchange-url",
             f"http://127.0.0.1:{sim_port}", "--feed", "rest", "--poll-interval", "0.1",
             "--db", pg_url, "--data-dir", str(root), "--instance", "metrics"],
            stdout=sink, stderr=sink, env=env))
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:
            fills = query(pg_url, "SELECT count(*) AS n FROM fills WHERE account=$1",
                          "metrics:paper:binance")[0]["n"]
            if fills:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("no fill within 120 s\n" + logs.read_text()[-4000:])
        yield f"http://127.0.0.1:{metrics_port}/metrics", env
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(15)


def test_every_named_metric_is_exported_and_moves_as_the_bot_trades(
        bot: tuple[str, dict]) -> None:
    url, _ = bot
    first = _scrape(url)
    missing = [m for m in REQUIRED if m not in first]
    assert missing == []
    time.sleep(3)  # the simulator runs 60x: a few candles later
    second = _scrape(url)

    def total(s: dict[str, list[tuple[str, float]]], name: str, where: str = "") -> float:
        return sum(v for head, v in s.get(name, []) if where in head)

    assert total(second, "stackbot_candles_processed_total") > \
        total(first, "stackbot_candles_processed_total") > 0
    assert total(second, "stackbot_decision_seconds_count") > \
        total(first, "stackbot_decision_seconds_count")
    assert total(second, "stackbot_ledger_commit_seconds_count") > 0
    assert total(second, "stackbot_fills_total") >= 1
    assert total(second, "stackbot_orders_total", 'status="filled"') >= 1
    assert total(second, "stackbot_equity") > 0
    assert total(second, "stackbot_trading_state", 'state="ACTIVE"') == 1
    assert total(second, "stackbot_trading_state", 'state="HALTED"') == 0
    assert total(second, "stackbot_feed_mode", 'mode="rest"') == 1  # the run polls REST
    assert total(second, "stackbot_inference_seconds_count", 'device="cpu"') > 0
    assert total(second, "stackbot_breaker_limit", 'breaker="drawdown"') > 0
    assert 'version="ema_cross-12-26"' in " ".join(h for h, _ in second["stackbot_ensemble_info"])
    assert abs(time.time() - total(second, "stackbot_heartbeat_timestamp_seconds")) < 60


def test_the_healthcheck_reads_the_heartbeat(bot: tuple[str, dict]) -> None:
    _, env = bot
    ok = subprocess.run([sys.executable, "-m", "bot", "healthcheck", "--max-age", "60"],
                        env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "healthy" in ok.stdout, ok.stderr
    stale = subprocess.run([sys.executable, "-m", "bot", "healthcheck", "--max-age", "0"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1 and "unhealthy" in stale.stderr
    nobody = subprocess.run([sys.executable, "-m", "bot", "healthcheck"],
                            env={**env, "STACKBOT_METRICS_PORT": str(free_port())},
                            capture_output=True, text=True, timeout=60)
    assert nobody.returncode == 1 and "no metrics" in nobody.stderr


def test_every_metric_the_grafana_dashboard_queries_is_exported(bot: tuple[str, dict]) -> None:
    url, _ = bot
    exported = set(_scrape(url))
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs.append(dash["templating"]["list"][0]["query"])
    used = {m for e in exprs for m in re.findall(r"\bstackbot_[a-z_]+", e)}
    assert len(used) >= 15 and len(exprs) >= 15  # the dashboard is not empty
    assert sorted(used - exported) == []
    # and the provisioning points Grafana at it, with the datasource the panels name
    prov = (ROOT / "docker/grafana/provisioning/datasources/prometheus.yml").read_text()
    uids = {p["datasource"]["uid"] for p in dash["panels"]}
    assert uids == {"stackbot-prom"} and "uid: stackbot-prom" in prov
