"""Replay throughput: candles per second through the whole engine, with every signal, order,
fill, position, equity snapshot and audit event written to PostgreSQL.

    python bench/replay.py [--db postgresql://postgres@127.0.0.1:5432/postgres] [--repeat 3]

Runs ``stackbot backtest`` as a fresh process (what a user waits for) over 1, 2, 4 and 8 pairs
of ../shared/data/binance-spot-1h, and prints the whole-process rate (wall clock, start-up and
file parsing included) and the engine's own rate (from the run summary).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "binance-spot-1h"
PAIRS = ["BTC", "ETH", "BNB", "LTC", "ADA", "XRP", "DOGE", "SOL"]


def _admin(admin: str, sql: str) -> None:
    import asyncio

    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def create_db(admin: str, template: str | None = None) -> str:
    name = f"stackbot_bench_{uuid.uuid4().hex[:6]}"
    _admin(admin, f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return admin.rsplit("/", 1)[0] + "/" + name


def drop_db(admin: str, url: str) -> None:
    """The scratch database goes when the benchmark ends, however it ends: each run leaves
    about 100k rows, and a pile of them slowed the machine's other work."""
    _admin(admin, f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def run(files: list[Path], db: str) -> tuple[float, dict[str, object]]:
    cmd = [sys.executable, "-m", "bot", "backtest", "--timeframe", "1h", "--json", "--db", db]
    for f in files:
        cmd += ["--data", str(f)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return wall, json.loads(proc.stdout[proc.stdout.index("{"):])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="admin URL; a scratch database is created beside it")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", default="1,2,4,8")
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent: the benchmark needs ../shared/data")
    db = create_db(args.db)
    try:
        measure(args, db)
    finally:
        drop_db(args.db, db)


def measure(args: argparse.Namespace, db: str) -> None:
    run([DATA / "BTC_USDT-1h.json"], db)  # warm the migrations and the page cache
    print(f"{'pairs':>5} {'candles':>8} {'wall s':>7} {'process c/s':>12} {'engine s':>9} "
          f"{'engine c/s':>11} {'trades':>7}")
    for n in (int(x) for x in args.sizes.split(",")):
        files = [DATA / f"{p}_USDT-1h.json" for p in PAIRS[:n]]
        walls, engines = [], []
        summary: dict[str, object] = {}
        for _ in range(args.repeat):
            wall, summary = run(files, db)
            walls.append(wall)
            engines.append(float(summary["elapsed_s"]))  # type: ignore[arg-type]
        wall, eng = statistics.median(walls), statistics.median(engines)
        candles = int(summary["candles"])  # type: ignore[call-overload]
        print(f"{n:>5} {candles:>8} {wall:>7.2f} {candles / wall:>12,.0f} {eng:>9.2f} "
              f"{candles / eng:>11,.0f} {summary['trades']!s:>7}")


if __name__ == "__main__":
    main()
