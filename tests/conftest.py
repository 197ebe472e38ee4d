"""Fixtures that connect to a real PostgreSQL: the server at 127.0.0.1:5432 when reachable,
otherwise an embedded one (pgserver). Never a mock, never SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.ledger.urls import plain_url

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _admin_url(tmp_root: Path) -> str:
    explicit = os.environ.get("SB_TEST_PG_URL")
    if explicit:
        return explicit
    if _reachable("127.0.0.1", 5432):
        return "postgresql://postgres@127.0.0.1:5432/postgres"
    return _embedded_admin(tmp_root)


def _embedded_admin(tmp_root: Path) -> str:
    from bot.ledger.embedded import embedded_url

    url = embedded_url(tmp_root)  # .../stackbot?host=...
    return url.replace("/stackbot?", "/postgres?")


async def _exec(url: str, sql: str) -> None:
    import asyncpg

    from bot.ledger.urls import async_url

    dsn = plain_url(async_url(url))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _with_db(url: str, name: str) -> str:
    head, _, tail = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{tail}" if tail else "")


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _admin_url(tmp_path_factory.mktemp("embedded-pg"))


@pytest.fixture(scope="session")
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, migrated database for the whole session."""
    name = f"stackbot_test_{uuid.uuid4().hex[:8]}"
    asyncio.run(_exec(pg_admin_url, f'CREATE DATABASE "{name}"'))
    url = _with_db(pg_admin_url, name)

    async def migrate() -> None:
        from bot.ledger.migrate import upgrade
        from bot.ledger.repository import make_engine

        engine = make_engine(url)
        await upgrade(engine)
        await engine.dispose()

    asyncio.run(migrate())
    yield url
    asyncio.run(_exec(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def fresh_db(pg_admin_url: str) -> Iterator[str]:
    """An empty, un-migrated database for one test."""
    name = f"stackbot_t_{uuid.uuid4().hex[:8]}"
    asyncio.run(_exec(pg_admin_url, f'CREATE DATABASE "{name}"'))
    yield _with_db(pg_admin_url, name)
    asyncio.run(_exec(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def ledger(pg_url: str) -> AsyncIterator[object]:
    from bot.ledger.repository import PostgresLedger

    led = PostgresLedger.from_url(pg_url)
    yield led
    await led.close()


async def fetch(url: str, sql: str, *args: object) -> list[dict[str, object]]:
    import asyncpg

    from bot.ledger.urls import async_url

    conn = await asyncpg.connect(plain_url(async_url(url)))
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(reason=f"real data not available: {path} is absent (a fresh clone has no "
                           "../shared)")
    return path


@pytest.fixture
async def mqtt_broker() -> AsyncIterator[tuple[str, int]]:
    """The Mosquitto at 127.0.0.1:1883 when reachable, else an in-process amqtt broker."""
    if _reachable("127.0.0.1", 1883) and not os.environ.get("SB_TEST_FORCE_AMQTT"):
        yield "127.0.0.1", 1883
        return
    from amqtt.broker import Broker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                     "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                                 {"allow_anonymous": True}}})
    await broker.start()
    try:
        yield "127.0.0.1", port
    finally:
        # amqtt's shutdown can hang on a session it fails to stop (Yakifo/amqtt#381); the
        # test is over by now, so a stuck teardown must not turn into a timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(broker.shutdown(), 10)


@pytest.fixture
def reaper() -> Iterator[list[Any]]:
    """Subprocesses a test started; any still running when it ends (a failed test) is killed."""
    procs: list[Any] = []
    yield procs
    for p in procs:
        if p.returncode is None:
            p.kill()
