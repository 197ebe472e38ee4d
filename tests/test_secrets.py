"""Issue 17: no secret on a command line, in a log or in the ledger.

One test plays the paths a secret could leak by: the migration with the owner's URL, a live
run whose every order the venue refuses, the retrain's child processes, and database errors.
Meanwhile a sampler reads every process's command line (``/proc/*/cmdline``, which any local
user can read). Then it greps the process lists, every log and every text column of the
ledger for each secret. The refusal is Binance's documented -2010 ("Account has insufficient
balance for requested action.", HTTP 400; https://developers.binance.com/docs/binance-spot-api-docs/errors),
which ccxt maps to ``InsufficientFunds``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from bot.sim.binance import SimBinance, build, start_server
from bot.sim.faults import FaultPlan
from tests.conftest import fetch
from tests.fault_helpers import live_config
from tests.live_helpers import spawn_logged

KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"  # Binance's length
API_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
APP_PW = f"app-{uuid.uuid4().hex}"
OWNER_PW = f"owner-{uuid.uuid4().hex}"
HMAC_KEY = f"hmac-{uuid.uuid4().hex}"
MQTT_PW = f"mqtt-{uuid.uuid4().hex}"
SECRETS = {"API key": KEY, "API secret": API_SECRET, "login password": APP_PW,
           "owner password": OWNER_PW, "command HMAC key": HMAC_KEY, "MQTT password": MQTT_PW}



def _url(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname or ''}" + (
        f":{parts.port}" if parts.port else "")))


class CmdlineSampler(threading.Thread):
    """Reads every process's command line every 20 ms, as any local user may."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: set[str] = set()
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for proc in Path("/proc").glob("[0-9]*/cmdline"):
                with contextlib.suppress(OSError):  # it ended between the listing and the read
                    self.seen.add(proc.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            self.samples += 1
            time.sleep(0.02)


@pytest.fixture
async def venue() -> AsyncIterator[tuple[SimBinance, int]]:
    sim = build(["BTC/USDT", "ETH/USDT"], "1m", speed=120.0, history=300, seed=11, future=5_000)
    sim.faults = FaultPlan.from_specs(["insufficient_funds=1.0"])  # before: the account keeps it
    sim.open_account(KEY, API_SECRET, {"USDT": "10000"})
    runner, port = await start_server(sim)
    yield sim, port
    await runner.cleanup()


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
async def test_no_secret_reaches_a_command_line_a_log_or_the_ledger(
        venue: tuple[SimBinance, int], fresh_db: str, tmp_path: Path) -> None:
    from bot.config import load_settings
    from bot.domain import AuditEvent, UnitOfWork
    from bot.jobs import child_env, retrain_commands, run_child
    from bot.ledger.repository import PostgresLedger

    _, port = venue
    owner = _url(fresh_db, urlsplit(fresh_db).username or "postgres", OWNER_PW)
    login = _url(fresh_db, "stackbot_app", APP_PW)  # the local servers trust: any password
    config = live_config(tmp_path)  # the fault tests' permissive risk settings
    base = {k: v for k, v in os.environ.items() if not k.startswith("STACKBOT_")}
    env = {**base, "STACKBOT_DATABASE_URL": login,
           "STACKBOT_EXCHANGE_API_KEY": KEY, "STACKBOT_EXCHANGE_SECRET": API_SECRET,
           "STACKBOT_MQTT_COMMAND_SECRET": HMAC_KEY, "STACKBOT_MQTT_PASSWORD": MQTT_PW}
    logs = tmp_path / "logs"
    logs.mkdir()
    sampler = CmdlineSampler()
    sampler.start()

    async def cli(name: str, *args: str, **extra: str) -> int:
        proc = await spawn_logged([sys.executable, "-m", "bot", *args], logs / f"{name}.log",
                                  **{**env, **extra})
        return await asyncio.wait_for(proc.wait(), 240)

    try:
        # 1) the migration, with the owner's URL, as compose's one-shot service runs it
        assert await cli("upgrade", "db", "upgrade", "--data-dir", str(tmp_path),
                         STACKBOT_DATABASE_MIGRATE_URL=owner) == 0
        # 2) a live run; the venue refuses every order it is sent
        assert await cli("live", "run", "--mode", "live", "--confirm-live", "--exchange",
                         "binance", "--symbols", "BTC/USDT,ETH/USDT", "--timeframe", "1m",
                         "--exchange-url", f"http://127.0.0.1:{port}", "--feed", "rest",
                         "--poll-interval", "0.1", "--max-candles", "40", "--config",
                         str(config), "--data-dir", str(tmp_path), "--instance", "secrets") == 0
        refused = await fetch(fresh_db, "SELECT status_reason FROM orders WHERE status = "
                              "'rejected' AND account = 'secrets:live:binance'")
        assert refused and all("insufficient" in r["status_reason"].lower() for r in refused), \
            "the venue refused nothing: the failing call was never made"
        # 3) the retrain's children, as the scheduled job runs them (the service's login only)
        settings = load_settings(config, {"data_dir": tmp_path, "symbols": ["BTC/USDT"],
                                          "timeframe": "1m", "exchange": {
                                              "url": f"http://127.0.0.1:{port}"}},
                                 environ={**env, "STACKBOT_DATABASE_MIGRATE_URL": owner})
        child = child_env({**env, "STACKBOT_DATABASE_MIGRATE_URL": owner}, settings, login)
        assert "STACKBOT_DATABASE_MIGRATE_URL" not in child
        download, train = retrain_commands(settings, tmp_path / "retrain", "2026-01-01")
        rc, dl_tail = await run_child(download, child)
        assert rc == 0, dl_tail
        rc, train_tail = await run_child(train, child)  # too little history: it fails, says so
        assert train_tail.strip(), "the training child printed nothing"
        # 4) database errors: a server that refuses the connection, and a driver error that
        #    quotes the password, stored in an audit payload the way a job stores its outcome
        assert await cli("status", "status", "--data-dir", str(tmp_path),
                         STACKBOT_DATABASE_URL=_url("postgresql://x@127.0.0.1:9/ledger",
                                                    "stackbot_app", APP_PW)) != 0
        ledger = PostgresLedger.from_url(login)
        try:
            await ledger.commit(UnitOfWork(audit=[AuditEvent(
                "retrain.done", "job", "retrain", "secrets:live:binance", "test", 0, {
                    "log": dl_tail[-500:] + train_tail[-500:],
                    "error": f'FATAL: password authentication failed ("{APP_PW}")'})]))
        finally:
            await ledger.close()
    finally:
        sampler.halt.set()
        sampler.join()

    assert sampler.samples > 50 and any("bot" in c and "download" in c for c in sampler.seen), \
        "the sampler never saw the retrain's download child"
    texts = {f"log {p.name}": p.read_text(errors="replace") for p in logs.iterdir()}
    texts |= {f"file {p.relative_to(tmp_path)}": p.read_text(errors="replace")
              for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".log")}
    texts["retrain output"] = dl_tail + train_tail
    texts |= {f"cmdline {c[:80]}": c for c in sampler.seen}
    columns = await fetch(fresh_db, "SELECT table_name, column_name FROM information_schema."
                          "columns WHERE table_schema = 'public' AND data_type IN "
                          "('text', 'character varying', 'json', 'jsonb')")
    assert len(columns) > 20
    for col in columns:
        rows = await fetch(fresh_db, f'SELECT "{col["column_name"]}"::text AS v FROM '
                           f'"{col["table_name"]}"')
        texts[f'{col["table_name"]}.{col["column_name"]}'] = "\n".join(
            r["v"] for r in rows if r["v"] is not None)
    assert "insufficient" in texts["orders.status_reason"].lower()
    assert "password authentication failed" in texts["audit_events.payload"]
    leaks = [f"{what} in {where}" for where, text in texts.items()
             for what, secret in SECRETS.items() if secret in text]
    assert leaks == []
