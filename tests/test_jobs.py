"""Scheduled jobs: configured so a restart never runs a missed job twice, and each job's work
lands in the ledger through the engine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bot.app import drive
from bot.config import JobSettings
from bot.domain import (
    Channel,
    ControlRequest,
    Housekeeping,
    Job,
    Mode,
    RetrainDone,
    RetrainOutcome,
)
from bot.engine import Engine
from bot.jobs import build_scheduler
from bot.ledger.repository import PostgresLedger
from tests.conftest import fetch
from tests.helpers import backtest_parts


async def test_scheduler_jobs_coalesce_with_grace(tmp_path: Path) -> None:
    class Dummy:
        pass

    sched = build_scheduler(Dummy(), JobSettings(misfire_grace_s=120), heartbeat=lambda: None)  # type: ignore[arg-type]
    sched.start(paused=True)  # job defaults apply once the scheduler starts
    jobs = {j.id: j for j in sched.get_jobs()}
    sched.shutdown(wait=False)
    assert set(jobs) == {"equity_snapshot", "risk_housekeeping", "daily_risk_reset",
                         "model_degradation_check", "retrain", "heartbeat"}
    for job in jobs.values():
        assert job.coalesce is True and job.misfire_grace_time == 120 and job.max_instances == 1
    assert str(jobs["daily_risk_reset"].trigger) == "cron[hour='0', minute='0']"
    assert "day='1'" in str(jobs["retrain"].trigger)  # monthly by default


class Promoted:
    id = "ens-20261123-test"


async def test_job_actions_are_carried_out_and_audited(tmp_path: Path, pg_url: str) -> None:
    settings, clock, feed, broker = backtest_parts(tmp_path, pg_url, 120, 9)

    def hook(engine: Engine) -> None:
        for job in (Job.SNAPSHOT, Job.TICK, Job.MODEL_CHECK, Job.RETRAIN):
            engine.controls.put_nowait((ControlRequest(Housekeeping(job), "scheduler",
                                                       Channel.JOBS), None))
        # a retrain that promoted a version the running source (the EMA baseline) cannot take
        engine.controls.put_nowait((ControlRequest(
            RetrainDone("promoted", RetrainOutcome("trained 12 members", Promoted())),
            "scheduler", Channel.JOBS), None))

    account = "jobs-test"
    await drive(settings, "jobsrun1", account, Mode.BACKTEST, "replay", ["BTC/USDT"], feed,
                broker, PostgresLedger.from_url(pg_url), clock, hook)
    kinds = {r["kind"]: json.loads(r["payload"]) for r in await fetch(
        pg_url, "SELECT kind, payload FROM audit_events WHERE account=$1", account)}
    assert kinds["model.check"]["status"] == "inactive"
    assert "no trainable model" in kinds["retrain.skipped"]["reason"]
    assert kinds["retrain.finished"] == {"outcome": "promoted", "log": "trained 12 members"}
    snaps = await fetch(pg_url, "SELECT count(*) AS n FROM equity_snapshots WHERE account=$1",
                        account)
    assert snaps[0]["n"] == 120 + 1  # one per candle step, plus the scheduled one


def test_retrain_children_take_the_database_url_from_the_environment_never_argv(
        tmp_path: Path) -> None:
    """Issue 17: any local user can read a process's command line (/proc/PID/cmdline), so the
    retrain's children get the database URL, password and all, in their environment. A real
    child reads it from there, and what a child prints is scrubbed of the password before it
    goes into the audit trail."""
    import os
    import subprocess

    from bot.config import load_settings
    from bot.jobs import child_env, retrain_commands
    from bot.logs import scrub

    password = "s3cr3t-Pw-91"
    url = f"postgresql://stackbot:{password}@127.0.0.1:5999/ledger"
    settings = load_settings(None, {"data_dir": tmp_path, "symbols": ["BTC/USDT", "ETH/USDT"]})
    download, train = retrain_commands(settings, tmp_path / "retrain", "2026-01-01")
    assert download[2:4] == ["bot", "download"] and train[2:4] == ["bot", "train"]
    for arg in download + train:
        assert password not in arg and "5999" not in arg and arg != "--db"
    parent = {k: v for k, v in os.environ.items() if not k.startswith("STACKBOT_")}
    env = child_env(parent, settings, url)
    assert env["STACKBOT_DATABASE_URL"] == url
    shown = subprocess.run([sys.executable, "-m", "bot", "config", "show"], env=env,
                           capture_output=True, text=True, timeout=120, check=True).stdout
    assert "127.0.0.1:5999/ledger" in shown and password not in shown  # read from the env
    leaked = f'connection failed: FATAL: password authentication failed ("{password}")'
    assert password not in scrub(leaked) and "connection failed" in scrub(leaked)
