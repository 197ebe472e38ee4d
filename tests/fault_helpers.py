"""Shared by the fault tests: a live-mode bot (a subprocess, as users run it) against the
in-process simulator, and the four checks every fault test ends with."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

from bot.sim.binance import SimBinance

KEY, SECRET = "soak-key-0123456789abcdef", "soak-secret-0123456789abcdef"
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")

CONFIG = """
[exchange]
timeout_ms = 1000
recv_window_ms = 3000
reconcile_every = 4
stall_timeout = 4.0

[strategy]
fast = 3
slow = 8

[risk]
max_exchange_error_rate = 1.0
stale_after_timeframes = 1000
cooldown_candles = 0
consecutive_losses = 1000
daily_loss_limit = 0.9
drawdown_limit = 0.9
max_orders = 1000
max_risk_per_trade = 0.05
max_exposure_symbol = 0.3
volatility_k = 100
"""


class AuditWitness:
    """The venue's own check, made as each order arrives and before it is accepted: is the
    order's ``order.created`` audit row committed? Read over a separate connection, so only a
    committed row is visible: this proves "audited before sent" by the commit itself, not by
    comparing timestamps (``now()`` in PostgreSQL is the transaction's start)."""

    def __init__(self, sim: SimBinance, pg_url: str) -> None:
        self.pg_url = pg_url
        self.checked: list[str] = []
        self.unaudited: list[str] = []  # the ledger answered: no committed row. A violation
        self.unverifiable: list[str] = []  # the ledger was down when the order arrived
        assert sim.account is not None
        sim.account.before_accept = self.check

    async def check(self, client_id: str) -> None:
        from tests.conftest import fetch

        self.checked.append(client_id)
        try:
            rows = await fetch(self.pg_url, "SELECT 1 FROM audit_events WHERE kind = "
                               "'order.created' AND entity_id = $1", client_id)
        except Exception:  # the database is down: the order cannot be checked now
            self.unverifiable.append(client_id)
            return
        if not rows:
            self.unaudited.append(client_id)


def live_config(tmp: Path, extra: str = "") -> Path:
    path = tmp / "live.toml"
    path.write_text(CONFIG + extra)
    return path


def live_cmd(port: int, db: str, data_dir: Path, instance: str, config: Path,
             feed: str = "ws") -> list[str]:
    return [sys.executable, "-m", "bot", "run", "--mode", "live", "--confirm-live",
            "--exchange", "binance", "--symbols", ",".join(SYMBOLS), "--timeframe", "1m",
            "--exchange-url", f"http://127.0.0.1:{port}", "--feed", feed,
            "--poll-interval", "0.2", "--db", db, "--data-dir", str(data_dir),
            "--instance", instance, "--config", str(config)]


LIVE_ENV = {"STACKBOT_EXCHANGE_API_KEY": KEY, "STACKBOT_EXCHANGE_SECRET": SECRET}


def assert_no_secrets(log: Path) -> None:
    text = log.read_text()
    assert KEY not in text and SECRET not in text, "an API secret reached the logs"


async def check_books(sim: SimBinance, pg_url: str, account: str, witness: AuditWitness,
                      unverifiable_ok: int = 0) -> dict[str, object]:
    """The invariants of issue 5, asserted; returns a few counts for the caller."""
    from bot.ledger.audit import verify_chain
    from bot.ledger.repository import make_engine
    from tests.conftest import fetch

    acct = sim.account
    assert acct is not None
    # 1. the venue never accepted one client order id twice
    assert acct.duplicate_client_ids() == {}
    # 2. every order at the venue is in the ledger, under its exchange id
    rows = await fetch(pg_url, "SELECT client_order_id, exchange_order_id, status FROM orders "
                       "WHERE account=$1", account)
    ledger = {r["client_order_id"]: r for r in rows}
    unknown = [o.client_id for o in acct.orders.values() if o.client_id not in ledger]
    assert unknown == [], f"orders at the venue the ledger does not know: {unknown}"
    # ... and its audit row was committed before the venue accepted it (seen by the venue)
    assert witness.unaudited == [], f"orders sent before their audit row committed: " \
                                    f"{witness.unaudited}"
    # only a test that stops the database may see an order arrive while it is down
    assert len(witness.unverifiable) <= unverifiable_ok, witness.unverifiable
    missed = [o.client_id for o in acct.orders.values() if o.client_id not in witness.checked]
    assert missed == [], f"orders the venue accepted without the check: {missed}"
    wrong_id = [o.client_id for o in acct.orders.values()
                if ledger[o.client_id]["exchange_order_id"] not in (None, str(o.order_id))]
    assert wrong_id == []
    # 3. the ledger's positions and cash are the venue's balances, to the last digit
    pos = await fetch(pg_url, "SELECT symbol, quantity FROM positions WHERE account=$1", account)
    held = {r["symbol"].split("/")[0]: Decimal(r["quantity"]) for r in pos}
    for sym in SYMBOLS:
        base = sym.split("/")[0]
        assert held.get(base, Decimal(0)) == acct.balances.get(base, Decimal(0)), \
            f"{base}: ledger {held.get(base)} venue {acct.balances.get(base)}"
    [cash] = await fetch(pg_url, "SELECT cash FROM accounts WHERE account=$1", account)
    assert Decimal(cash["cash"]) == acct.balances["USDT"]
    # 4. the audit chain verifies
    engine = make_engine(pg_url)
    try:
        report = await verify_chain(engine)
    finally:
        await engine.dispose()
    assert report.ok, report.describe()
    # 5. the API key and secret are nowhere in the database
    for secret in (KEY, SECRET):
        leaks = await fetch(pg_url, "SELECT (SELECT count(*) FROM runs WHERE config::text LIKE "
                            "'%' || $1 || '%') + (SELECT count(*) FROM audit_events WHERE "
                            "payload::text LIKE '%' || $1 || '%') AS n", secret)
        assert leaks[0]["n"] == 0, "an API secret reached the database"
    fills = await fetch(pg_url, "SELECT count(*) AS n FROM fills WHERE account=$1", account)
    return {"venue_orders": len(acct.orders), "ledger_orders": len(rows),
            "fills": fills[0]["n"], "trades": len(acct.trades)}


async def settled(sim: SimBinance) -> bool:
    """No order at the venue still open except resting stops (placed by the bot)."""
    assert sim.account is not None
    return all(o.type == "STOP_LOSS" for o in sim.account.orders.values()
               if o.status in ("NEW", "PARTIALLY_FILLED"))


async def unseen_fills(sim: SimBinance, db: str, account: str) -> list[str]:
    """After the bot stopped: assert that, symbol by symbol, the ledger's position differs from
    the venue's balance by exactly what the venue filled on orders beyond what the ledger has
    booked for them; return those orders' types.

    A resting stop can fill at the venue after the bot's last look at it and before it exits
    (or after it exited: the stop stays to protect the position); the ledger then lags the
    venue by exactly that fill until the next start books it. Freeze the market and match
    first (``sim.clock.freeze()``, ``sim.account.match()``) so nothing fills after this."""
    from tests.conftest import fetch

    acct = sim.account
    assert acct is not None
    rows = await fetch(db, "SELECT client_order_id, filled_qty, status, order_type, side, "
                       "(SELECT coalesce(sum(quantity), 0) FROM fills f WHERE "
                       "f.client_order_id = o.client_order_id) AS in_fills "
                       "FROM orders o WHERE account=$1", account)
    booked = {r["client_order_id"]: Decimal(r["filled_qty"]) for r in rows}
    ledger_row = {r["client_order_id"]: dict(r) for r in rows}
    pos = await fetch(db, "SELECT symbol, quantity FROM positions WHERE account=$1", account)
    held = {r["symbol"].split("/")[0]: Decimal(r["quantity"]) for r in pos}
    unseen: dict[str, Decimal] = {}
    kinds: list[str] = []
    differing: list[str] = []
    for o in acct.orders.values():
        extra = o.executed - booked.get(o.client_id, Decimal(0))
        if extra:
            differing.append(f"{o.client_id} {o.side} {o.type} venue {o.status} executed "
                             f"{o.executed}; ledger {ledger_row.get(o.client_id)}")
            kinds.append(o.type)
            base = o.symbol.removesuffix("USDT")
            unseen[base] = unseen.get(base, Decimal(0)) + (extra if o.side == "BUY" else -extra)
    for sym in SYMBOLS:
        base = sym.split("/")[0]
        venue = acct.balances.get(base, Decimal(0))
        assert venue - held.get(base, Decimal(0)) == unseen.get(base, Decimal(0)), \
            f"{base}: ledger {held.get(base)} venue {venue}, unseen fills {unseen.get(base)}; " \
            f"orders the ledger booked differently: {differing}"
    return kinds


async def reconciled_after(db: str, account: str, runs: int) -> bool:
    """The start after ``runs`` earlier ones has reached a verdict that ledger and venue agree."""
    from tests.conftest import fetch

    rows = await fetch(db, "SELECT count(*) AS n FROM audit_events a JOIN runs r ON "
                       "r.id = a.run_id WHERE r.account=$1 AND a.kind = 'reconcile.ok' AND "
                       "r.id = (SELECT id FROM runs WHERE account=$1 ORDER BY started_at DESC "
                       "LIMIT 1) AND (SELECT count(*) FROM runs WHERE account=$1) > $2",
                       account, runs)
    return rows[0]["n"] > 0
