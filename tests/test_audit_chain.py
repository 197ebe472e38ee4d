"""Tamper evidence: the audit trail is a hash chain kept by the database; UPDATE and DELETE are
refused; a row altered with the triggers switched off is caught by `stackbot audit verify`."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from bot.cli import app
from bot.ledger.repository import AUDIT_APPEND
from bot.ledger.urls import async_url, plain_url
from tests.helpers import write_series


async def _sql(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(plain_url(async_url(url)))
    try:
        for s in statements:
            await conn.execute(s)
    finally:
        await conn.close()


def test_chain_verifies_then_catches_tampering(fresh_db: str, tmp_path: Path) -> None:
    runner = CliRunner()
    data = write_series(tmp_path, "BTC/USDT", 300, seed=8)
    assert runner.invoke(app, ["backtest", "--data", str(data), "--timeframe", "1h",
                               "--db", fresh_db]).exit_code == 0
    ok = runner.invoke(app, ["audit", "verify", "--db", fresh_db])
    assert ok.exit_code == 0 and "audit chain intact" in ok.output
    # the application cannot rewrite history
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        asyncio.run(_sql(fresh_db, "UPDATE audit_events SET kind='x' WHERE seq = 5"))
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        asyncio.run(_sql(fresh_db, "DELETE FROM audit_events WHERE seq = 5"))
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        asyncio.run(_sql(fresh_db, "UPDATE audit_chain_head SET seq = 1"))
    # an owner switches the triggers off and edits a row: the chain names it
    asyncio.run(_sql(fresh_db, "SET session_replication_role = replica",
                     "UPDATE audit_events SET payload = '{\"quantity\": \"999\"}' WHERE seq = 7"))
    bad = runner.invoke(app, ["audit", "verify", "--db", fresh_db])
    assert bad.exit_code == 1
    assert "BROKEN at seq 7" in bad.output and "altered" in bad.output


def test_deleting_the_tail_is_caught(fresh_db: str, tmp_path: Path) -> None:
    runner = CliRunner()
    data = write_series(tmp_path, "BTC/USDT", 200, seed=9)
    assert runner.invoke(app, ["backtest", "--data", str(data), "--timeframe", "1h",
                               "--db", fresh_db]).exit_code == 0
    asyncio.run(_sql(fresh_db, "SET session_replication_role = replica",
                     "DELETE FROM audit_events WHERE seq = (SELECT max(seq) FROM audit_events)"))
    bad = runner.invoke(app, ["audit", "verify", "--db", fresh_db])
    assert bad.exit_code == 1 and "rows removed from the end" in bad.output


def test_the_service_role_cannot_rewrite_the_audit_trail(fresh_db: str, tmp_path: Path) -> None:
    """Migrations run as the owner; the service works as ``stackbot_app``, which may insert
    audit rows (and so advance the chain) but holds no UPDATE, DELETE or TRUNCATE on them,
    so a tampering attempt fails on privileges before the triggers are even asked."""
    runner = CliRunner()
    data = write_series(tmp_path, "BTC/USDT", 200, seed=9)
    result = runner.invoke(app, ["backtest", "--data", str(data), "--timeframe", "1h",
                                 "--db", fresh_db])
    assert result.exit_code == 0, result.output  # the whole run wrote as the app role

    async def as_app(statement: str) -> str:
        conn = await asyncpg.connect(plain_url(async_url(fresh_db)))
        try:
            await conn.execute("SET ROLE stackbot_app")
            await conn.execute(statement)
            return "done"
        except asyncpg.PostgresError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            await conn.close()

    for statement in ("UPDATE audit_events SET kind = 'x'", "DELETE FROM audit_events",
                      "TRUNCATE audit_events", "UPDATE audit_chain_head SET seq = 0",
                      "DELETE FROM orders"):
        outcome = asyncio.run(as_app(statement))
        assert outcome.startswith("InsufficientPrivilegeError"), (statement, outcome)
    # what the service needs still works under the role
    assert asyncio.run(as_app("UPDATE orders SET status = status")) == "done"
    assert asyncio.run(as_app(
        "INSERT INTO audit_events (account, run_id, ts, kind, entity, entity_id, payload) "
        "VALUES ('a', 'r', now(), 'test.kind', 'e', '1', '{}')")) == "done"
    assert runner.invoke(app, ["audit", "verify", "--db", fresh_db]).exit_code == 0


async def _rewrite_history(url: str, seq: int) -> None:
    """What an attacker with the owner's rights does: edit one row, then recompute every later
    link and the head, so the chain verifies on its own."""
    from bot.ledger.audit import link_hash

    conn = await asyncpg.connect(plain_url(async_url(url)))
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("UPDATE audit_events SET payload = '{\"quantity\": \"999\"}' "
                           "WHERE seq = $1", seq)
        rows = await conn.fetch(
            "SELECT id, seq, account, run_id, (floor(extract(epoch from ts) * 1000))::bigint "
            "AS ts_ms, kind, entity, entity_id, payload::text AS payload, prev_hash "
            "FROM audit_events WHERE seq >= $1 ORDER BY seq", seq)
        prev = rows[0]["prev_hash"]
        for r in rows:
            h = link_hash(r["seq"], r["account"], r["run_id"], r["ts_ms"], r["kind"],
                          r["entity"], r["entity_id"], r["payload"], prev)
            await conn.execute("UPDATE audit_events SET prev_hash = $1, hash = $2 WHERE id = $3",
                               prev, h, r["id"])
            prev = h
        await conn.execute("UPDATE audit_chain_head SET hash = $1 WHERE id = 1", prev)
    finally:
        await conn.close()


def test_rewriting_the_table_and_its_head_together_is_caught_by_the_anchors(
        fresh_db: str, tmp_path: Path) -> None:
    """Issue 17: the chain head lives in the same database, so rewriting a row, every later
    link and the head leaves a chain that verifies. Every run anchors the head outside the
    database (data_dir/audit-anchors.jsonl); verify against the anchors then fails and names
    the first anchor that no longer matches."""
    runner = CliRunner()
    common = ["--db", fresh_db, "--data-dir", str(tmp_path)]
    for seed in (8, 9):  # two runs, two anchors
        data = write_series(tmp_path, "BTC/USDT", 200, seed=seed)
        assert runner.invoke(app, ["backtest", "--data", str(data), "--timeframe", "1h",
                                   *common]).exit_code == 0
    anchors = tmp_path / "audit-anchors.jsonl"
    lines = anchors.read_text().splitlines()
    assert len(lines) == 2
    first_seq = json.loads(lines[0])["seq"]
    ok = runner.invoke(app, ["audit", "verify", "--anchors", str(anchors), *common])
    assert ok.exit_code == 0 and "through all 2 anchors" in ok.output, ok.output
    asyncio.run(_rewrite_history(fresh_db, 7))
    blind = runner.invoke(app, ["audit", "verify", *common])
    assert blind.exit_code == 0 and "intact" in blind.output  # invisible without anchors
    bad = runner.invoke(app, ["audit", "verify", "--anchors", str(anchors), *common])
    assert bad.exit_code == 1, bad.output
    said = " ".join(bad.output.split())  # the console wraps long lines
    assert f"BROKEN at seq {first_seq}" in said
    assert f"the anchor of seq {first_seq} written" in said and "no longer matches" in said
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"seq": 1}\n')
    refused = runner.invoke(app, ["audit", "verify", "--anchors", str(junk), *common])
    assert refused.exit_code != 0
    assert "junk.jsonl:1: not an audit anchor" in " ".join(refused.output.split())


def test_a_bulk_insert_chains_like_single_rows_and_moves_the_head_once(
        fresh_db: str, tmp_path: Path) -> None:
    """Migration 0007: the head is carried from row to row inside the transaction and written
    once per statement. A 3,000-row COPY used to cost O(n^2) (each row walked every earlier
    version of the head row); now it must chain exactly as rows inserted one at a time would,
    so the independent re-computation in ``audit verify`` passes, and the head row must have
    been rewritten once per statement, not once per row."""
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade", "--db", fresh_db]).exit_code == 0

    async def go() -> tuple[int, int, int]:
        conn = await asyncpg.connect(plain_url(async_url(fresh_db)))
        stat = "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'audit_chain_head'"
        try:
            await conn.execute("SELECT pg_stat_force_next_flush()")
            before = await conn.fetchval(stat)
            at = datetime(2024, 1, 1, tzinfo=UTC)
            rows = [("acct", "run1", at, "test.bulk", "e", str(i),
                     json.dumps({"i": i, "s": "x" * (i % 7)})) for i in range(3000)]
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "audit_events", columns=["account", "run_id", "ts", "kind", "entity",
                                             "entity_id", "payload"], records=rows)
                # a second statement in the same transaction continues the chain
                await conn.execute(
                    "INSERT INTO audit_events (account, run_id, ts, kind, entity, entity_id, "
                    "payload) VALUES ('acct', 'run1', now(), 'test.one', 'e', 'x', '{}')")
            # and a later transaction picks the head up from the table, not the setting
            await conn.execute(
                "INSERT INTO audit_events (account, run_id, ts, kind, entity, entity_id, "
                "payload) VALUES ('acct', 'run1', now(), 'test.two', 'e', 'y', '{}')")
            head = await conn.fetchval("SELECT seq FROM audit_chain_head WHERE id = 1")
            n = await conn.fetchval("SELECT count(*) FROM audit_events")
            # n_tup_upd counts every rewrite of the head row since the database was made
            await conn.execute("SELECT pg_stat_force_next_flush()")
            return head, n, await conn.fetchval(stat) - before
        finally:
            await conn.close()

    head, n, updates = asyncio.run(go())
    assert head == n == 3002
    assert updates == 3, updates  # one per statement: the COPY, and the two INSERTs
    ok = runner.invoke(app, ["audit", "verify", "--db", fresh_db])
    assert ok.exit_code == 0 and "audit chain intact: 3002 rows" in ok.output, ok.output


def test_a_forged_carried_head_is_refused(fresh_db: str) -> None:
    """The carried head (``stackbot.audit_head``) is a setting any client can write. The
    trigger refuses one that names no real link, and one that names an older link gets a seq
    that already exists: either way nothing off the chain is appended."""
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade", "--db", fresh_db]).exit_code == 0
    insert = ("INSERT INTO audit_events (account, run_id, ts, kind, entity, entity_id, payload) "
              "VALUES ('a', 'r', now(), 'test.kind', 'e', '1', '{}')")

    async def go() -> list[str]:
        conn = await asyncpg.connect(plain_url(async_url(fresh_db)))
        out = []
        try:
            await conn.execute("SET ROLE stackbot_app")
            for _ in range(3):
                await conn.execute(insert)
            for forged in ("{tx}:2:" + "f" * 64, "{tx}:1:{h1}"):
                try:
                    async with conn.transaction():
                        tx = await conn.fetchval("SELECT txid_current()")
                        h1 = await conn.fetchval("SELECT hash FROM audit_events WHERE seq = 1")
                        await conn.execute("SELECT set_config('stackbot.audit_head', $1, true)",
                                           forged.format(tx=tx, h1=h1))
                        await conn.execute(insert)
                    out.append("appended")
                except asyncpg.PostgresError as exc:
                    out.append(type(exc).__name__)
            return out
        finally:
            await conn.close()

    assert asyncio.run(go()) == ["InsufficientPrivilegeError", "UniqueViolationError"]
    ok = runner.invoke(app, ["audit", "verify", "--db", fresh_db])
    assert ok.exit_code == 0 and "audit chain intact: 3 rows" in ok.output, ok.output


def test_a_batch_chained_in_one_call_is_the_chain_rows_would_make(fresh_db: str) -> None:
    """Migration 0013: the service passes a unit's audit rows as one JSON batch to
    ``audit_append(batch)``, which chains them all in one call. The result must be the chain the
    row trigger makes: ``audit verify`` recomputes every link in Python (``link_hash``) from
    the rows, so a batch whose canonical text or order differed would fail it. Rows inserted
    one at a time before and after, in the same transaction and in later ones, continue the
    same chain; the batch's ids rise with its seqs; each row's time, in milliseconds, is stored
    exactly; a malformed batch is refused and chains nothing."""
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade", "--db", fresh_db]).exit_code == 0
    insert = ("INSERT INTO audit_events (account, run_id, ts, kind, entity, entity_id, payload) "
              "VALUES ('acct', 'run1', now(), 'test.one', 'e', $1, '{\"a\": [1, 2.50]}')")
    at = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
    rows = [["acct", "run1", at + i * 1001, "test.batch", "e", str(i),
             {"i": i, "q": "0.00100000", "s": "é" * (i % 3), "t": "tab\there \"q\""}]
            for i in range(500)]
    batch = json.dumps(rows)

    async def go() -> tuple[int, int, str, list[str], list[int]]:
        conn = await asyncpg.connect(plain_url(async_url(fresh_db)))
        try:
            await conn.execute("SET ROLE stackbot_app")  # as the service writes
            await conn.execute(insert, "before")
            async with conn.transaction():
                await conn.execute(insert, "same-tx-before")
                chained = await conn.fetchval(AUDIT_APPEND, batch)
                await conn.execute(insert, "same-tx-after")
            await conn.execute(insert, "after")
            try:
                async with conn.transaction():  # a row short of a field
                    await conn.fetchval(AUDIT_APPEND, json.dumps([rows[0], rows[1][:-1]]))
                refused = ""
            except asyncpg.PostgresError as exc:
                refused = f"{type(exc).__name__}: {exc}"
            await conn.execute("RESET ROLE")
            head = await conn.fetchval("SELECT seq FROM audit_chain_head WHERE id = 1")
            got = await conn.fetch("SELECT entity_id, id, (extract(epoch from ts) * 1000)"
                                   "::bigint AS ms FROM audit_events ORDER BY seq")
            # each row's time, given in milliseconds, is stored to the millisecond
            assert [r["ms"] for r in got[2:502]] == [at + i * 1001 for i in range(500)]
            return chained, head, refused, [r["entity_id"] for r in got], [r["id"] for r in got]
        finally:
            await conn.close()

    chained, head, refused, order, ids = asyncio.run(go())
    assert chained == 500 and head == 504
    assert order == ["before", "same-tx-before", *map(str, range(500)), "same-tx-after",
                     "after"]
    assert ids == sorted(ids)
    assert refused.startswith("InvalidParameterValueError") and "ts_ms" in refused, refused
    ok = runner.invoke(app, ["audit", "verify", "--db", fresh_db])
    assert ok.exit_code == 0 and "audit chain intact: 504 rows" in ok.output, ok.output


def test_the_service_cannot_mark_its_own_insert_as_a_chained_batch(fresh_db: str) -> None:
    """Only ``audit_append(batch)`` (running as the table's owner) may insert rows the row
    trigger does not chain. The service's login can set the batch mark of its own
    transaction, but its insert is not the owner's: the trigger still runs, so a seq and
    hash it makes up are replaced by the chain's, and nothing off the chain is appended."""
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade", "--db", fresh_db]).exit_code == 0

    async def go() -> list[tuple[int, str]]:
        conn = await asyncpg.connect(plain_url(async_url(fresh_db)))
        try:
            await conn.execute("SET ROLE stackbot_app")
            for marked in (True, False):  # with the mark set, and with it never set
                async with conn.transaction():
                    if marked:
                        await conn.execute("SELECT set_config('stackbot.audit_batch', "
                                           "txid_current()::text, true)")
                    await conn.execute(
                        "INSERT INTO audit_events (account, run_id, ts, kind, entity, "
                        "entity_id, payload, seq, prev_hash, hash) VALUES ('a', 'r', now(), "
                        "'test.forged', 'e', '1', '{}', 777, 'x', $1)", "f" * 64)
            return [(r["seq"], r["hash"]) for r in await conn.fetch(
                "SELECT seq, hash FROM audit_events ORDER BY seq")]
        finally:
            await conn.close()

    links = asyncio.run(go())
    assert [seq for seq, _ in links] == [1, 2], links
    assert all(digest != "f" * 64 for _, digest in links), links
    ok = runner.invoke(app, ["audit", "verify", "--db", fresh_db])
    assert ok.exit_code == 0 and "audit chain intact: 2 rows" in ok.output, ok.output


def test_verifying_while_the_bot_writes_is_not_a_false_alarm(fresh_db: str) -> None:
    """The console verifies the chain while a bot keeps appending. Rows and head must come
    from one snapshot: reading the head after the rows once reported 'rows removed from the
    end' for rows merely added meanwhile (seen in CI through the console)."""
    from bot.ledger.audit import verify_chain
    from bot.ledger.repository import make_engine

    assert CliRunner().invoke(app, ["db", "upgrade", "--db", fresh_db]).exit_code == 0
    insert = ("INSERT INTO audit_events (account, run_id, ts, kind, entity, entity_id, "
              "payload) SELECT 'acct', 'run1', now(), 'test.w', 'e', g::text, '{}' "
              "FROM generate_series(1, $1) g")

    async def go() -> tuple[list[bool], int]:
        conn = await asyncpg.connect(plain_url(async_url(fresh_db)))
        await conn.execute(insert, 20_000)  # enough rows that a walk takes a while
        stop = asyncio.Event()
        written = 0

        async def writer() -> None:
            nonlocal written
            while not stop.is_set():
                await conn.execute(insert, 50)
                written += 50
                await asyncio.sleep(0)

        task = asyncio.create_task(writer())
        engine = make_engine(fresh_db)
        try:
            results = [(await verify_chain(engine)).ok for _ in range(3)]
        finally:
            stop.set()
            await task
            await engine.dispose()
            await conn.close()
        return results, written

    results, written = asyncio.run(go())
    assert written > 0  # the writer really wrote during the walks
    assert results == [True, True, True]
