"""Kill-switch latency against a running paper instance, through a real MQTT broker.

    python bench/killswitch.py [--cycles 5] [--db postgresql://postgres@127.0.0.1:5432/postgres]

Starts the Binance simulator (10 symbols, 1m candles at 60x), the bot as a subprocess in paper
mode with MQTT on (Mosquitto at 127.0.0.1:1883 if reachable, else an in-process amqtt broker),
waits until protective stops rest at the venue, then for each cycle publishes a signed
``kill`` (level cancel) and measures, from the publish:

- entries blocked: the retained ``risk/state`` message saying HALTED (published after the
  state change is committed to PostgreSQL, before any cancel);
- all open orders cancelled: the command's ack (sent after every cancel is committed).

Then a signed ``resume``, and it waits for new positions before the next cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt  # noqa: E402

from bench.replay import create_db, drop_db  # noqa: E402
from bot.bus.signing import sign  # noqa: E402
from bot.sim.binance import build, start_server  # noqa: E402
from tests.conftest import fetch  # noqa: E402
from tests.live_helpers import run_cmd, spawn, until  # noqa: E402

SECRET = "bench-secret-0123456789"
SYMBOLS = ["BTC", "ETH", "BNB", "LTC", "ADA", "XRP", "DOGE", "SOL", "DOT", "TRX"]


def signed(action: str, **extra: Any) -> bytes:
    body = {"id": uuid.uuid4().hex, "ts": int(time.time() * 1000), "nonce": uuid.uuid4().hex,
            "operator": "bench", "reason": "latency benchmark", **extra}
    return json.dumps(sign(action, body, SECRET)).encode()


async def broker() -> tuple[str, int, Any]:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 1883), timeout=1):
            return "127.0.0.1", 1883, None
    except OSError:
        from amqtt.broker import Broker

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        b = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                    "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                                {"allow_anonymous": True}}})
        await b.start()
        return "127.0.0.1", port, b


async def main(cycles: int, db: str) -> None:
    symbols = [f"{s}/USDT" for s in SYMBOLS]
    sim = build(symbols, "1m", speed=60.0, history=300, seed=5)
    runner, port = await start_server(sim)
    host, mport, amqtt_broker = await broker()
    instance = f"bench{uuid.uuid4().hex[:6]}"
    account = f"{instance}:paper:binance"
    root = f"stackbot/v1/{instance}"
    proc = await spawn(run_cmd(port, db, Path(tempfile.mkdtemp()), instance,
                               symbols=",".join(symbols)),
                       STACKBOT_MQTT_ENABLED="true", STACKBOT_MQTT_HOST=host,
                       STACKBOT_MQTT_PORT=str(mport), STACKBOT_MQTT_COMMAND_SECRET=SECRET,
                       STACKBOT_RISK_MAX_OPEN_POSITIONS="10",
                       STACKBOT_RISK_MAX_EXPOSURE_TOTAL="1")
    blocked: list[float] = []
    cancelled: list[float] = []
    counts: list[int] = []
    try:
        async with aiomqtt.Client(host, mport) as client:
            await client.subscribe(f"{root}/risk/state")
            await client.subscribe(f"{root}/cmd/ack")
            inbox: asyncio.Queue[tuple[float, str, dict[str, Any]]] = asyncio.Queue()

            async def read() -> None:
                async for m in client.messages:
                    inbox.put_nowait((time.perf_counter(), str(m.topic),
                                      json.loads(m.payload)))  # type: ignore[arg-type]

            reader = asyncio.create_task(read())
            for cycle in range(cycles):
                async def enough() -> bool:
                    try:
                        rows = await fetch(db, "SELECT count(*) AS n FROM orders WHERE "
                                           "account=$1 AND status='open'", account)
                    except Exception:  # the bot may still be migrating a fresh database
                        return False
                    return rows[0]["n"] >= 3

                await until(enough, timeout=180, every=0.2)
                while not inbox.empty():
                    inbox.get_nowait()
                msg = signed("kill", level="cancel", instance=instance, account=account)
                t0 = time.perf_counter()
                await client.publish(f"{root}/cmd/kill", msg)
                t_block = t_ack = None
                n = 0
                while t_block is None or t_ack is None:
                    t, topic, body = await asyncio.wait_for(inbox.get(), 10)
                    if topic.endswith("risk/state") and body.get("state") == "HALTED":
                        t_block = t_block or t
                    if topic.endswith("cmd/ack"):
                        t_ack, n = t, body["result"].get("cancelled", 0)
                blocked.append((t_block - t0) * 1000)
                cancelled.append((t_ack - t0) * 1000)
                counts.append(n)
                print(f"cycle {cycle + 1}: entries blocked {blocked[-1]:.1f} ms, "
                      f"{n} open orders cancelled {cancelled[-1]:.1f} ms", flush=True)
                await client.publish(f"{root}/cmd/resume", signed("resume", instance=instance,
                                                                  account=account))
            reader.cancel()
    finally:
        proc.terminate()
        await proc.wait()
        await runner.cleanup()
        if amqtt_broker is not None:
            await amqtt_broker.shutdown()
    print(f"\nbroker {'mosquitto' if amqtt_broker is None else 'amqtt'} at {host}:{mport}; "
          f"{cycles} cycles, {statistics.mean(counts):.1f} open orders on average")
    print(f"command -> entries blocked:       median {statistics.median(blocked):7.1f} ms, "
          f"max {max(blocked):7.1f} ms  (aim <= 100 ms)")
    print(f"command -> all orders cancelled:  median {statistics.median(cancelled):7.1f} ms, "
          f"max {max(cancelled):7.1f} ms  (aim <= 2000 ms)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--db", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    db = create_db(args.db)
    try:
        asyncio.run(main(args.cycles, db))
    finally:
        drop_db(args.db, db)
