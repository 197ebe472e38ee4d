"""The kill switch end to end, against a running paper instance on the Binance simulator:
a signed MQTT ``kill`` (level cancel) through a real broker, bad commands, a restart that stays
HALTED until ``stackbot resume``, and the same through ``stackbot kill`` with no broker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from typer.testing import CliRunner

from bot.bus.signing import sign
from bot.cli import app
from bot.sim.binance import SimBinance, build, start_server
from tests.conftest import fetch
from tests.live_helpers import run_cmd, spawn, until

SECRET = "test-command-secret-123"
WORKING = "('open', 'partially_filled', 'pending_submit')"


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimBinance, int]]:
    s = build(["BTC/USDT", "ETH/USDT"], "1m", speed=60.0, history=300, seed=21)
    runner, port = await start_server(s)
    yield s, port
    await runner.cleanup()


def command(action: str, **fields: Any) -> bytes:
    base = {"id": f"cmd-{uuid.uuid4().hex[:8]}", "ts": int(time.time() * 1000),
            "nonce": uuid.uuid4().hex, "operator": "alice", "reason": "test"}
    base.update(fields)
    return json.dumps(sign(action, base, SECRET)).encode()


async def working_stops(db: str, account: str) -> int:
    rows = await fetch(db, f"SELECT count(*) AS n FROM orders WHERE account=$1 AND status IN "
                       f"{WORKING}", account)
    return int(rows[0]["n"])


async def state_of(db: str, account: str) -> tuple[str, str] | None:
    rows = await fetch(db, "SELECT state, reason FROM risk_states WHERE account=$1", account)
    return (rows[0]["state"], rows[0]["reason"]) if rows else None


async def test_signed_mqtt_kill_cancel_then_restart_stays_halted(
        sim: tuple[SimBinance, int], mqtt_broker: tuple[str, int], pg_url: str,
        tmp_path: Path) -> None:
    _, port = sim
    host, mport = mqtt_broker
    instance = f"kill{uuid.uuid4().hex[:6]}"
    account = f"{instance}:paper:binance"
    env = {"STACKBOT_MQTT_ENABLED": "true", "STACKBOT_MQTT_HOST": host,
           "STACKBOT_MQTT_PORT": str(mport), "STACKBOT_MQTT_COMMAND_SECRET": SECRET}
    root = f"stackbot/v1/{instance}"
    proc = await spawn(run_cmd(port, pg_url, tmp_path, instance), **env)
    acks: list[dict[str, Any]] = []
    try:
        async with aiomqtt.Client(host, mport) as client:
            await client.subscribe(f"{root}/#")

            async def collect() -> None:
                async for m in client.messages:
                    if str(m.topic) == f"{root}/cmd/ack":
                        acks.append(json.loads(m.payload))  # type: ignore[arg-type]

            reader = asyncio.create_task(collect())
            # a position with its protective stop resting at the venue: an open order
            await until(lambda: _has_working(pg_url, account), timeout=90)

            async def ack_for(cid: str | None, n: int) -> dict[str, Any]:
                await until(lambda: _ack_count(acks, n), timeout=10)
                return next(a for a in acks if a.get("id") == cid) if cid else acks[n - 1]

            # 1) unsigned resume: refused, audited, changes nothing
            await client.publish(f"{root}/cmd/resume", json.dumps(
                {"id": "u1", "ts": int(time.time() * 1000), "nonce": "n-u1", "operator": "mallory",
                 "reason": "x"}).encode())
            a1 = await ack_for("u1", 1)
            assert a1["verdict"] == "rejected" and a1["reason"] == "unsigned command"
            # 2) the signed kill, level cancel
            kill = command("kill", level="cancel", reason="exchange maintenance",
                           instance=instance, account=account)
            sent = time.monotonic()
            await client.publish(f"{root}/cmd/kill", kill)
            kid = json.loads(kill)["id"]
            a2 = await ack_for(kid, 2)
            ack_s = time.monotonic() - sent
            assert a2["verdict"] == "accepted" and a2["ok"] is True
            assert a2["result"]["state"] == "HALTED" and a2["result"]["cancelled"] >= 1
            assert ack_s < 2.0
            assert await working_stops(pg_url, account) == 0
            st = await state_of(pg_url, account)
            assert st is not None and st[0] == "HALTED" and "exchange maintenance" in st[1]
            # 3) the same message again: a replay, refused
            await client.publish(f"{root}/cmd/kill", kill)
            a3 = await ack_for(None, 3)
            assert a3["verdict"] == "rejected" and a3["reason"] == "replayed nonce"
            # 4) entries stay blocked while candles keep coming
            halted_at = await fetch(pg_url, "SELECT max(ts) AS t FROM signals WHERE account=$1",
                                    account)
            await until(lambda: _signals_after(pg_url, account, halted_at[0]["t"], 5), timeout=30)
            buys = await fetch(pg_url, "SELECT count(*) AS n FROM orders WHERE account=$1 AND "
                               "side='buy' AND signal_ts > $2", account, halted_at[0]["t"])
            assert buys[0]["n"] == 0
            reader.cancel()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    audit = await fetch(pg_url, "SELECT kind, payload FROM audit_events WHERE account=$1 AND "
                        "kind LIKE 'command.%' ORDER BY id", account)
    kinds = [r["kind"] for r in audit]
    assert kinds.count("command.rejected") == 2 and kinds.count("command.accepted") == 1
    reasons = [json.loads(r["payload"])["reason"] for r in audit if r["kind"] == "command.rejected"]
    assert reasons == ["unsigned command", "replayed nonce"]
    # 5) restart: still HALTED, nothing bought, until an operator resumes
    proc = await spawn(run_cmd(port, pg_url, tmp_path, instance, max_candles=6))
    _, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert (await state_of(pg_url, account) or ("",))[0] == "HALTED"
    runs = await fetch(pg_url, "SELECT summary FROM runs WHERE account=$1 ORDER BY started_at "
                       "DESC LIMIT 1", account)
    assert json.loads(runs[0]["summary"])["trading_state"] == "HALTED"
    result = await asyncio.get_running_loop().run_in_executor(None, lambda: CliRunner().invoke(
        app, ["resume", "--reason", "checked", "--operator", "bob", "--account", account,
              "--db", pg_url]))
    assert result.exit_code == 0, result.output
    st = await state_of(pg_url, account)
    assert st is not None and st[0] == "ACTIVE"
    who = await fetch(pg_url, "SELECT payload FROM audit_events WHERE account=$1 AND "
                      "kind='risk.state_changed' ORDER BY id DESC LIMIT 1", account)
    assert json.loads(who[0]["payload"])["operator"] == "bob"


async def test_cli_kill_without_any_broker(sim: tuple[SimBinance, int], pg_url: str,
                                           tmp_path: Path) -> None:
    _, port = sim
    instance = f"clik{uuid.uuid4().hex[:6]}"
    account = f"{instance}:paper:binance"
    proc = await spawn(run_cmd(port, pg_url, tmp_path, instance))  # MQTT disabled
    try:
        await until(lambda: _has_working(pg_url, account), timeout=90)
        runner = CliRunner()
        result = await asyncio.get_running_loop().run_in_executor(None, lambda: runner.invoke(
            app, ["kill", "--level", "cancel", "--reason", "no broker needed",
                  "--account", account, "--db", pg_url]))
        assert result.exit_code == 0, result.output
        took = await until(lambda: _no_working(pg_url, account), timeout=10, every=0.05)
        assert took < 5
        done = await fetch(pg_url, "SELECT processed_at, result FROM control_requests WHERE "
                           "account=$1", account)
        await until(lambda: _processed(pg_url, account), timeout=10)
        st = await state_of(pg_url, account)
        assert st is not None and st[0] == "HALTED" and "no broker needed" in st[1]
        assert done
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def _has_working(db: str, account: str) -> bool:
    return await working_stops(db, account) > 0


async def _no_working(db: str, account: str) -> bool:
    return await working_stops(db, account) == 0


async def _processed(db: str, account: str) -> bool:
    rows = await fetch(db, "SELECT count(*) AS n FROM control_requests WHERE account=$1 AND "
                       "processed_at IS NOT NULL", account)
    return rows[0]["n"] >= 1


async def _signals_after(db: str, account: str, ts: Any, n: int) -> bool:
    rows = await fetch(db, "SELECT count(DISTINCT ts) AS n FROM signals WHERE account=$1 AND "
                       "ts > $2", account, ts)
    return rows[0]["n"] >= n


async def _ack_count(acks: list[dict[str, Any]], n: int) -> bool:
    return len(acks) >= n


async def test_mqtt_outage_never_stops_trading(sim: tuple[SimBinance, int], pg_url: str,
                                               tmp_path: Path) -> None:
    """MQTT on, but no broker anywhere: the bot trades and finishes its run normally."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    _, port = sim
    instance = f"nobroker{uuid.uuid4().hex[:6]}"
    proc = await spawn(run_cmd(port, pg_url, tmp_path, instance, max_candles=12),
                       STACKBOT_MQTT_ENABLED="true", STACKBOT_MQTT_PORT=str(dead),
                       STACKBOT_MQTT_COMMAND_SECRET=SECRET)
    _, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"mqtt_unavailable" in err
    rows = await fetch(pg_url, "SELECT count(*) AS n FROM signals WHERE account=$1",
                       f"{instance}:paper:binance")
    assert rows[0]["n"] == 12


async def test_sigterm_with_configured_kill_level(sim: tuple[SimBinance, int], pg_url: str,
                                                  tmp_path: Path) -> None:
    """risk.kill_on_signal = cancel: SIGTERM cancels open orders, HALTs, then stops."""
    _, port = sim
    instance = f"sig{uuid.uuid4().hex[:6]}"
    account = f"{instance}:paper:binance"
    proc = await spawn(run_cmd(port, pg_url, tmp_path, instance),
                       STACKBOT_RISK_KILL_ON_SIGNAL="cancel")
    await until(lambda: _has_working(pg_url, account), timeout=90)
    t0 = time.monotonic()
    proc.terminate()
    await asyncio.wait_for(proc.wait(), 10)
    assert time.monotonic() - t0 < 5 and proc.returncode == 0
    assert await working_stops(pg_url, account) == 0
    st = await state_of(pg_url, account)
    assert st is not None and st[0] == "HALTED" and "SIGTERM" in st[1]
