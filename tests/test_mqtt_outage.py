"""Acceptance 4 of issue 5: the MQTT broker goes away in the middle of a session. Trading
goes on, the CLI kill switch (which goes through the database) still works meanwhile, and
telemetry resumes once the broker is back.

The broker is the real one (Mosquitto when reachable, else in-process amqtt) behind a TCP gate
that the test cuts and reopens on the same port: the bot sees what a dead broker gives, its
connection closed and reconnects refused. The bot is a subprocess talking to it over TCP. Only
live publications count as telemetry: the retained status the broker replays on subscribe
proves nothing about the bot."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt

from bot.sim.binance import build, start_server
from tests.conftest import fetch
from tests.live_helpers import TcpGate, run_cmd, spawn_logged, stop, until


async def _listen(port: int, topic: str, seen: list[tuple[float, str]],
                  stop: asyncio.Event) -> None:
    """Subscribe to what the bot publishes live; reconnect while the broker is away."""
    while not stop.is_set():
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="outage-test") as client:
                await client.subscribe(topic)
                async for message in client.messages:
                    if not message.retain:
                        seen.append((time.monotonic(), str(message.topic)))
                    if stop.is_set():
                        return
        except aiomqtt.MqttError:
            await asyncio.sleep(0.3)


async def test_trading_and_kill_switch_survive_a_broker_outage(
        fresh_db: str, tmp_path: Path, reaper: list[Any],
        mqtt_broker: tuple[str, int]) -> None:
    from bot.ledger.migrate import upgrade
    from bot.ledger.repository import make_engine

    engine = make_engine(fresh_db)
    await upgrade(engine)
    await engine.dispose()
    gate = TcpGate(mqtt_broker[1], mqtt_broker[0])
    mqtt_port = await gate.open()
    sim = build(["BTC/USDT", "ETH/USDT"], "1m", speed=120.0, history=300, seed=3)
    runner, port = await start_server(sim)
    config = tmp_path / "mqtt.toml"
    config.write_text(f"[mqtt]\nenabled = true\nport = {mqtt_port}\nheartbeat_s = 0.5\n"
                      "command_secret = 'mqtt-outage-secret-0123456789'\n"
                      "[strategy]\nfast = 3\nslow = 8\n")
    log = tmp_path / "bot.log"
    instance = f"mqttout{mqtt_port}"
    account = f"{instance}:paper:binance"
    proc = await spawn_logged(run_cmd(port, fresh_db, tmp_path, instance) + ["--config",
                                                                             str(config)], log)
    reaper.append(proc)
    seen: list[tuple[float, str]] = []
    done = asyncio.Event()
    listener = asyncio.create_task(_listen(mqtt_port, f"stackbot/v1/{instance}/#", seen,
                                            done))

    async def signals() -> int:
        rows = await fetch(fresh_db, "SELECT count(*) AS n FROM signals WHERE account=$1", account)
        return int(rows[0]["n"])

    try:
        await until(lambda: _some(seen, 3), timeout=60)
        # ---- the broker goes away -------------------------------------------------------
        await gate.cut()
        down_at = time.monotonic()
        n0 = await signals()
        await asyncio.sleep(4)
        assert proc.returncode is None, log.read_text()[-3000:]
        assert await signals() > n0, "trading stopped with the broker"
        # the CLI kill switch goes through the database, not the broker
        kill = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "kill", "--reason", "broker outage drill", "--db",
            fresh_db, "--instance", instance, "--mode", "paper", "--data-dir", str(tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(kill.communicate(), 60)
        assert kill.returncode == 0, out.decode()
        halted: list[Any] = []

        async def is_halted() -> bool:
            halted[:] = await fetch(fresh_db, "SELECT payload FROM audit_events WHERE account=$1 "
                                    "AND kind = 'risk.state_changed'", account)
            return any('"HALTED"' in str(r["payload"]) or "HALTED" in str(r["payload"])
                       for r in halted)

        await until(is_halted, timeout=20)
        # ---- the broker comes back: telemetry resumes -----------------------------------
        await gate.open()
        back_at = time.monotonic()
        await until(lambda: _some([m for m in seen if m[0] > back_at], 2), timeout=60)
        resumed_in = min(t for t, _ in seen if t > back_at) - back_at
        await stop(proc, log)
    finally:
        done.set()
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        if proc.returncode is None:
            proc.kill()
        await gate.cut()
        await runner.cleanup()
    during = [t for t, _ in seen if down_at < t < back_at]
    assert during == []  # nothing could be delivered while it was down (sanity of the drill)
    text = log.read_text()
    assert '"mqtt_unavailable"' in text
    print(f"\nmqtt outage: {back_at - down_at:.1f}s down; telemetry back {resumed_in:.1f}s after "
          "the broker")


async def _some(seen: list[tuple[float, str]], n: int) -> bool:
    return len(seen) >= n
