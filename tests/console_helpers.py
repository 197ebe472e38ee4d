"""A paper bot trading on the Binance simulator, and the console (``stackbot serve``) beside
it, each a process of its own, as an operator runs them. Module-scoped by the tests."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bot.web.auth import hash_password
from tests.conftest import fetch

PASSWORD = "correct horse battery"
TOKEN = "test-api-token-0123456789"
PASSWORD_HASH = hash_password(PASSWORD)


def query(db: str, sql: str, *args: object) -> list[dict[str, object]]:
    """``fetch`` from synchronous code, even where a loop runs in this thread (Playwright's
    sync API keeps one): on a thread of its own."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(fetch(db, sql, *args))).result()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Stack:
    url: str  # the console's base URL
    db: str
    account: str
    data_dir: Path
    env: dict[str, str]


def _wait(check: object, timeout: float, what: str, logs: list[Path]) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.3)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"{what} not within {timeout:.0f} s\n{tails}")


def _trading(db: str, account: str) -> bool:
    rows = query(db, "SELECT (SELECT count(*) FROM fills WHERE account=$1) AS f, "
                 "(SELECT count(*) FROM orders WHERE account=$1 AND status IN "
                 "('open', 'partially_filled')) AS o", account)
    return bool(rows[0]["f"] >= 2 and rows[0]["o"] >= 1)


def answers(url: str, needle: bytes = b"") -> bool:
    """``url`` answers 200 (with ``needle`` in its body)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200 and needle in r.read())
    except OSError:
        return False


def wait_for_simulator(port: int, logs: list[Path], timeout: float = 60.0) -> None:
    """Until the simulator answers: a bot started before it listens exits on its first
    request (ExchangeNotAvailable), and a fixed sleep is too short on a slow machine."""
    _wait(lambda: answers(f"http://127.0.0.1:{port}/api/v3/ping"), timeout,
          f"the simulator on port {port}", logs)


def _healthy(url: str) -> bool:
    return answers(f"{url}/health", b'"ledger":true')


@contextmanager
def paper_stack(db: str, root: Path, instance: str) -> Iterator[Stack]:
    """The simulator, a paper bot that has traded (fills, and a protective stop working),
    and the console for its account, logged in with ``PASSWORD`` or ``TOKEN``."""
    sim_port, web_port = free_port(), free_port()
    env = dict(os.environ, STACKBOT_LOG_FORMAT="json", STACKBOT_WEB_PASSWORD_HASH=PASSWORD_HASH,
               STACKBOT_WEB_API_TOKEN=TOKEN, STACKBOT_WEB_LOGIN_ATTEMPTS="3",
               STACKBOT_WEB_LOGIN_WINDOW_S="60")
    logs = [root / "sim.log", root / "bot.log", root / "web.log"]
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: Path) -> None:
        with log.open("ab") as sink:
            procs.append(subprocess.Popen([sys.executable, "-m", "bot", *args], env=env,
                                          stdout=sink, stderr=sink))

    account = f"{instance}:paper:binance"
    common = ["--db", db, "--data-dir", str(root), "--instance", instance]
    try:
        start(["sim-exchange", "--port", str(sim_port), "--symbols", "BTC/USDT,ETH/USDT",
               "--speed", "60", "--history", "300", "--seed", "21"], logs[0])
        wait_for_simulator(sim_port, logs)
        start(["run", "--mode", "paper", "--exchange", "binance", "--symbols",
               "BTC/USDT,ETH/USDT", "--timeframe", "1m", "--exchange-url",
               f"http://127.0.0.1:{sim_port}", "--feed", "rest", "--poll-interval", "0.1",
               *common], logs[1])
        _wait(lambda: _trading(db, account), 120, "a paper bot with fills and a working stop",
              logs)
        start(["serve", "--port", str(web_port), *common], logs[2])
        url = f"http://127.0.0.1:{web_port}"
        _wait(lambda: _healthy(url), 60, "the console", logs)
        yield Stack(url, db, account, root, env)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
