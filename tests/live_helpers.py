"""Helpers for tests that run the service as a user does: a subprocess against the simulator."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path


def run_cmd(port: int, db: str, data_dir: Path, instance: str, max_candles: int = 100_000,
            symbols: str = "BTC/USDT,ETH/USDT") -> list[str]:
    return [sys.executable, "-m", "bot", "run", "--mode", "paper", "--exchange", "binance",
            "--symbols", symbols, "--timeframe", "1m",
            "--exchange-url", f"http://127.0.0.1:{port}", "--feed", "rest",
            "--poll-interval", "0.1", "--max-candles", str(max_candles), "--db", db,
            "--data-dir", str(data_dir), "--instance", instance]


async def spawn(cmd: list[str], **env: str) -> asyncio.subprocess.Process:
    full = dict(os.environ, STACKBOT_LOG_FORMAT="json", **env)
    return await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=full)


async def spawn_logged(cmd: list[str], log: Path, **env: str) -> asyncio.subprocess.Process:
    """Like ``spawn`` but output goes to a file: a long run must never block on a full pipe."""
    full = dict(os.environ, STACKBOT_LOG_FORMAT="json", **env)
    with log.open("ab") as sink:
        return await asyncio.create_subprocess_exec(*cmd, stdout=sink, stderr=sink, env=full)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 60.0,
                every: float = 0.1) -> float:
    """Poll ``check`` until it is true; returns the seconds it took, fails on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await check():
            return time.monotonic() - t0
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


async def stop(proc: asyncio.subprocess.Process, log: Path, within: float = 30.0) -> None:
    """SIGTERM and wait; a bot that does not exit in time prints its asyncio tasks (SIGUSR1)
    into ``log`` before it is killed, and the failure shows them."""
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), within)
    except TimeoutError:
        proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(1)
        proc.kill()
        raise AssertionError(f"no exit {within:.0f} s after SIGTERM:\n"
                             f"{log.read_text()[-12000:]}") from None
    assert proc.returncode == 0, log.read_text()[-3000:]


class TcpGate:
    """A loopback TCP forwarder in front of a real service that a test can cut and reopen.

    Cutting it closes every forwarded connection and stops listening, which is what a client
    sees when the service's process dies: its connection ends and reconnecting is refused until
    the port listens again. The service itself keeps running, so the drill never depends on the
    service's own shutdown (amqtt's can hang: Yakifo/amqtt#381)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_w))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))
        self._writers.difference_update((writer, up_w))
