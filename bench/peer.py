"""stackbot against freqtrade, side by side: the same candles, the same machine, the same run.

    python bench/peer.py [--cases a,b,e] [--pairs 3] [--ftdir ~/.cache/ftbench]

For each case it runs ``--pairs`` pairs of whole processes, interleaved (freqtrade, stackbot,
freqtrade, stackbot, ...), so that whatever else the machine is doing weighs on both alike,
and prints each one's median wall time, stackbot's peak RSS and the ratio of the medians.

- case a: BTC/USDT 1h, 2017-08 to 2022-10 (45,024 candles);
- case b: the eight pairs of ``../shared/data/binance-spot-1h`` (about 301k candles);
- case e: case a's file with ``--strategy ensemble``: a quick-preset ensemble trained on it
  once (``stackbot train``, into the template database ``--ensemble-db``, made on first use),
  against freqtrade's run of case a (its own EMA strategy on the same file).

freqtrade runs through ``../shared/peers/freqtrade/bench_ft.sh`` (its README: EMA 12/26 cross,
long only, 0.1 % fee, a 5 % stop), set up on first use in ``--ftdir``. stackbot runs
``stackbot backtest`` with its default strategy (the same EMA 12/26 cross), the full risk
manager, and every signal, order, fill, equity snapshot and audit event written to PostgreSQL,
each run into a scratch database of its own, created and dropped outside the timing.

Which database a run starts on:

- by default, a copy of a migrated ledger (the template ``--base-db``, migrated once with
  ``stackbot db upgrade``): what every backtest after a user's first one finds. The run still
  checks the schema's revision and the service login at start, as every start does;
- ``--fresh``: an empty database, which the run migrates inside its timing (a user's very first
  backtest; the migrations cost about a second on 2 cores).

Both sides run from compiled bytecode: freqtrade's venv was installed compiled by pip, and the
checkout (and ``--before``'s) is byte-compiled once before the timing (``compile_checkout``).

The ratio is "how many times faster than freqtrade": freqtrade's median over stackbot's.
Only ratios taken this way are comparable across machines; absolute seconds are not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import DATA, PAIRS, _admin, create_db, drop_db  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FT_SCRIPT = SHARED / "peers" / "freqtrade" / "bench_ft.sh"
CASES = {"a": ["BTC"], "b": PAIRS, "e": ["BTC"]}
FT_CASE = {"a": "a", "b": "b", "e": "a"}  # freqtrade's run each case is compared with
ENSEMBLE_HOME = Path.home() / ".cache" / "stackbot-bench-ens"


def _wait(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Exit status and the child's peak RSS in MiB (from its own rusage)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024


def _exists(admin: str, name: str) -> bool:
    """Whether the database ``name`` exists on the server of ``admin``."""
    import asyncio

    import asyncpg

    async def exists() -> bool:
        conn = await asyncpg.connect(admin)
        try:
            return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname=$1",
                                            name))
        finally:
            await conn.close()

    return asyncio.run(exists())


def ensemble_template(admin: str, name: str) -> None:
    """The template database holding a promoted quick-preset ensemble trained on case e's
    file (training takes minutes on 2 cores, so it is done once and kept)."""
    if _exists(admin, name):
        return
    print(f"training the quick-preset ensemble into {name} (once)", flush=True)
    _admin(admin, f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "-m", "bot", "train", "--data",
                    str(DATA / "BTC_USDT-1h.json"), "--symbols", "BTC/USDT", "--timeframe",
                    "1h", "--preset", "quick", "--device", "cpu", "--promote", "always",
                    "--db", admin.rsplit("/", 1)[0] + "/" + name,
                    "--data-dir", str(ENSEMBLE_HOME)], check=True)


def base_template(admin: str, name: str, tree: Path | None = None) -> None:
    """The template database of the baseline cases: an empty ledger, migrated once (by
    ``tree``'s code, for a ``--before`` checkout whose migrations differ)."""
    if _exists(admin, name):
        return
    _admin(admin, f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "-m", "bot", "db", "upgrade", "--db",
                    admin.rsplit("/", 1)[0] + "/" + name], check=True,
                   stdout=subprocess.DEVNULL, cwd=tree)


def compile_checkout(tree: Path | None) -> None:
    """Byte-compile the checkout's packages once, before any timing. freqtrade runs from a
    venv that pip installed compiled, as the container installs stackbot; an editable
    checkout is compiled on first import instead, or on every import where
    ``PYTHONDONTWRITEBYTECODE`` is set (about 0.15 s of case a on this box)."""
    root = tree or Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "bot", "risk", "strategies",
                    "models", "migrations"], cwd=root, check=True, stdout=subprocess.DEVNULL,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})


def stackbot(case: str, admin: str, tree: Path | None = None,
             template: str | None = None) -> tuple[float, float, str]:
    """One whole ``stackbot backtest`` process; ``tree``: run that checkout's code instead;
    ``template``: the database it starts on is a copy of that one (None: an empty one)."""
    db = create_db(admin, template)
    try:
        cmd = [sys.executable, "-m", "bot", "backtest", "--timeframe", "1h", "--json",
               "--db", db]
        if case == "e":
            cmd += ["--strategy", "ensemble"]
        for p in CASES[case]:
            cmd += ["--data", str(DATA / f"{p}_USDT-1h.json")]
        with tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=tree)
            out = proc.stdout.read() if proc.stdout else b""
            rc, rss = _wait(proc)
            wall = time.perf_counter() - t0
            err.seek(0)
            tail = err.read()[-3000:].decode(errors="replace")
    finally:
        drop_db(admin, db)
    if rc != 0:
        raise SystemExit(f"stackbot backtest failed (exit {rc}):\n{tail}")
    text = out.decode()
    summary = json.loads(text[text.index("{"):])
    return wall, rss, f"{summary['candles']} candles, {summary['trades']} trades"


def freqtrade(case: str, ftdir: Path) -> float:
    env = {**os.environ, "FTDIR": str(ftdir)}
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(FT_SCRIPT), FT_CASE[case]], env=env, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"freqtrade case {case} failed: {proc.stderr[-1500:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="a,b")
    ap.add_argument("--pairs", type=int, default=3, help="interleaved runs of each")
    ap.add_argument("--ftdir", type=Path, default=Path.home() / ".cache" / "ftbench")
    ap.add_argument("--db", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="admin URL; scratch databases are created beside it")
    ap.add_argument("--before", type=Path, default=None,
                    help="another checkout (e.g. a git worktree of an older commit): its "
                    "stackbot runs interleaved too, as a third column")
    ap.add_argument("--ensemble-db", default="stackbot_bench_ens_tmpl",
                    help="case e: template database with the promoted ensemble (made once)")
    ap.add_argument("--base-db", default="stackbot_bench_base_tmpl",
                    help="cases a and b: template database, a migrated empty ledger (made once)")
    ap.add_argument("--before-base-db", default="stackbot_bench_base_tmpl_before",
                    help="cases a and b with --before: the before checkout's own template "
                    "(migrated by its code, made once; drop it when that checkout changes)")
    ap.add_argument("--fresh", action="store_true",
                    help="cases a and b start on an empty database and migrate it in the timing")
    args = ap.parse_args()
    if not DATA.exists() or not FT_SCRIPT.exists():
        raise SystemExit(f"needs {DATA} and {FT_SCRIPT} (../shared beside the checkout)")
    if not (args.ftdir / "venv" / "bin" / "freqtrade").exists():
        print(f"setting freqtrade up in {args.ftdir} (once)", flush=True)
        subprocess.run(["bash", str(FT_SCRIPT), "setup"], env={**os.environ,
                       "FTDIR": str(args.ftdir)}, check=True)
    compile_checkout(None)
    if args.before is not None:
        compile_checkout(args.before)
    print(f"{'case':<5}{'run':>4}{'freqtrade s':>13}{'stackbot s':>12}{'RSS MiB':>9}"
          f"{'before s':>10}  stackbot")
    rows = []
    for case in args.cases.split(","):
        if case == "e":
            ensemble_template(args.db, args.ensemble_db)
            template: str | None = args.ensemble_db
        elif args.fresh:
            template = None
        else:
            base_template(args.db, args.base_db)
            template = args.base_db
        before_template = template
        if args.before is not None and template == args.base_db:
            base_template(args.db, args.before_base_db, args.before)
            before_template = args.before_base_db
        ft, sb, rss, old = [], [], [], []
        for i in range(args.pairs):
            ft.append(freqtrade(case, args.ftdir))
            wall, peak, what = stackbot(case, args.db, template=template)
            sb.append(wall)
            rss.append(peak)
            if args.before is not None:
                old_wall, _, old_what = stackbot(case, args.db, args.before, before_template)
                old.append(old_wall)
                if old_what != what:  # the comparison is only fair on the same work
                    what += f" (before: {old_what})"
            before = f"{old[-1]:>10.2f}" if old else f"{'-':>10}"
            print(f"{case:<5}{i + 1:>4}{ft[-1]:>13.2f}{wall:>12.2f}{peak:>9.0f}{before}  {what}",
                  flush=True)
        rows.append((case, statistics.median(ft), statistics.median(sb), max(rss),
                     statistics.median(old) if old else None))
    print("\nmedians of interleaved runs; ratio = freqtrade / stackbot (above 1: stackbot "
          "faster)")
    print(f"{'case':<5}{'freqtrade s':>13}{'stackbot s':>12}{'ratio':>8}{'peak RSS MiB':>14}"
          f"{'before s':>10}{'before ratio':>14}")
    for case, f, s, r, o in rows:
        tail = f"{o:>10.2f}{f / o:>13.2f}x" if o is not None else ""
        print(f"{case:<5}{f:>13.2f}{s:>12.2f}{f / s:>7.2f}x{r:>14.0f}{tail}")


if __name__ == "__main__":
    main()
