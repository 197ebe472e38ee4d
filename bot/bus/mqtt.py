"""The MQTT adapter (aiomqtt): telemetry out, signed commands in.

Topics live under ``stackbot/v1/{instance}/``. ``status`` is retained, with a last will of
"offline". Publishing never blocks trading: messages go to a bounded queue, dropped oldest
first while the broker is away, and a background task connects, reconnects with jittered
backoff, subscribes to ``cmd/+`` and drains the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from bot.logs import get_logger

log = get_logger("bus")
CommandHandler = Callable[[str, bytes], Awaitable[dict[str, Any]]]


def topic_root(instance: str) -> str:
    return f"stackbot/v1/{instance}"


class MqttBus:
    def __init__(self, host: str, port: int, instance: str, on_command: CommandHandler,
                 username: str | None = None, password: str | None = None,
                 queue_size: int = 10_000) -> None:
        self.host, self.port = host, port
        self.root = topic_root(instance)
        self.instance = instance
        self.on_command = on_command
        self.username, self.password = username, password
        self._queue: deque[tuple[str, bytes, bool]] = deque(maxlen=queue_size)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.dropped = 0
        self.connects = 0
        self._status: dict[str, Any] = {"state": "online"}
        self._closing = False

    # ---- outbound -----------------------------------------------------------------------
    def publish(self, sub: str, payload: dict[str, Any], retain: bool = False) -> None:
        """Queue a message for ``{root}/{sub}``; never blocks, never raises."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        body = json.dumps(payload, default=str, separators=(",", ":")).encode()
        self._queue.append((f"{self.root}/{sub}", body, retain))
        self._wake.set()

    def set_status(self, status: dict[str, Any]) -> None:
        self._status = {"state": "online", **status}
        self.publish("status", self._status, retain=True)

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt")

    async def close(self) -> None:
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):  # what is not out in 2 s is dropped
            await asyncio.wait_for(asyncio.shield(self._drained()), 2.0)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _drained(self) -> None:
        while self._queue and self.connected.is_set():
            await asyncio.sleep(0.01)

    async def _run(self) -> None:
        import aiomqtt

        attempt = 0
        will = aiomqtt.Will(f"{self.root}/status", json.dumps({"state": "offline"}).encode(),
                            qos=1, retain=True)
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, username=self.username,
                                          password=self.password, will=will,
                                          identifier=f"stackbot-{self.instance}-{random.getrandbits(32):08x}",
                                          keepalive=15, timeout=5) as client:
                    attempt = 0
                    self.connects += 1
                    self.connected.set()
                    await client.subscribe(f"{self.root}/cmd/+", qos=1)
                    await client.publish(f"{self.root}/status", json.dumps(self._status).encode(),
                                         qos=1, retain=True)
                    log.info("mqtt_connected", host=self.host, port=self.port)
                    reader = asyncio.create_task(self._read(client))
                    try:
                        await self._write(client, reader)
                    finally:
                        reader.cancel()
                        await asyncio.gather(reader, return_exceptions=True)
                        if self._closing:
                            await client.publish(f"{self.root}/status",
                                                 json.dumps({"state": "offline"}).encode(),
                                                 qos=1, retain=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # aiomqtt.MqttError and socket errors: reconnect
                self.connected.clear()
                attempt += 1
                delay = min(30.0, 0.5 * 2 ** min(attempt, 6)) * random.uniform(0.5, 1.5)
                log.warning("mqtt_unavailable", error=str(exc), retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()

    async def _write(self, client: Any, reader: asyncio.Task[None]) -> None:
        while True:
            while self._queue:
                topic, body, retain = self._queue[0]
                await client.publish(topic, body, qos=0, retain=retain)
                self._queue.popleft()
            if self._closing:
                return
            self._wake.clear()
            waiter = asyncio.create_task(self._wake.wait())
            done, _ = await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if reader in done:
                reader.result()  # re-raise the connection error
                return

    async def _read(self, client: Any) -> None:
        prefix = f"{self.root}/cmd/"
        async for message in client.messages:
            topic = str(message.topic)
            action = topic[len(prefix):] if topic.startswith(prefix) else ""
            if action in ("", "ack"):
                continue
            payload = message.payload if isinstance(message.payload, bytes) else \
                str(message.payload or "").encode()
            try:
                ack = await self.on_command(action, payload)
            except Exception as exc:  # a handler bug must not kill the command channel
                log.error("command_handler_failed", error=str(exc))
                ack = {"ok": False, "verdict": "error", "reason": "internal error"}
            self.publish("cmd/ack", ack)
