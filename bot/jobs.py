"""Recurring jobs (APScheduler's AsyncIOScheduler, UTC). Jobs that write go through the
engine's queue, so the engine stays the only writer; the heartbeat only reads.

Each job coalesces missed runs and has a misfire grace period, so a restart never runs a
missed job twice.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.config import JobSettings
from bot.domain import (
    Channel,
    ControlRequest,
    Housekeeping,
    Job,
    RetrainDone,
    RetrainOutcome,
)
from bot.engine import Engine
from bot.logs import password_of, register_secrets, scrub


def _queue(engine: Engine, job: Job) -> Any:
    async def queued() -> None:
        engine.submit_control(ControlRequest(Housekeeping(job), "scheduler", Channel.JOBS))

    queued.__name__ = f"queue_{job.value}"
    return queued


def build_scheduler(engine: Engine, cfg: JobSettings, heartbeat: Any = None,
                    heartbeat_s: float = 15.0, retrain: Any = None,
                    anchor: Any = None) -> AsyncIOScheduler:
    sched = AsyncIOScheduler(timezone="UTC", job_defaults={
        "coalesce": True, "max_instances": 1, "misfire_grace_time": cfg.misfire_grace_s})
    sched.add_job(_queue(engine, Job.SNAPSHOT), IntervalTrigger(seconds=cfg.equity_snapshot_s),
                  id="equity_snapshot")
    sched.add_job(_queue(engine, Job.TICK), IntervalTrigger(seconds=cfg.housekeeping_s),
                  id="risk_housekeeping")
    sched.add_job(_queue(engine, Job.TICK), CronTrigger(hour=0, minute=0, timezone="UTC"),
                  id="daily_risk_reset")
    sched.add_job(_queue(engine, Job.MODEL_CHECK),
                  CronTrigger.from_crontab(cfg.model_check_cron, timezone="UTC"),
                  id="model_degradation_check")
    sched.add_job(retrain or _queue(engine, Job.RETRAIN),
                  CronTrigger.from_crontab(cfg.retrain_cron, timezone="UTC"), id="retrain")
    if heartbeat is not None:
        sched.add_job(heartbeat, IntervalTrigger(seconds=heartbeat_s), id="heartbeat")
    if anchor is not None:
        sched.add_job(anchor, IntervalTrigger(minutes=cfg.anchor_minutes), id="audit_anchor")
    return sched


def retrain_job(engine: Engine, settings: Any, db_url: str, history_days: int = 730) -> Any:
    """Monthly by default. With the ensemble as signal source: download fresh history, train
    in a separate process, promote only if the new version beats the active one out of sample
    on the same window, then score with it. Either way the outcome is audited."""
    import os
    from datetime import UTC, datetime, timedelta

    env = child_env(os.environ, settings, db_url)

    async def run(cmd: list[str]) -> tuple[int, str]:
        return await run_child(cmd, env)

    async def job() -> None:
        if engine.parts.source.name != "ensemble":
            engine.submit_control(ControlRequest(Housekeeping(Job.RETRAIN), "scheduler",
                                                 Channel.JOBS))
            return
        now = datetime.now(UTC)
        folder = settings.home / "retrain" / now.strftime("%Y%m%d%H%M%S")
        since = (now - timedelta(days=history_days)).strftime("%Y-%m-%d")
        dl, train = retrain_commands(settings, folder, since)
        rc, log = await run(dl)
        outcome, done = "download failed", RetrainOutcome(log)
        if rc == 0:
            rc, log = await run(train)
            promoted = rc == 0 and "promoted to active" in log
            outcome = ("promoted" if promoted else "kept the active version") if rc == 0 \
                else "training failed"
            done = RetrainOutcome(log, await _load_active(db_url, settings) if promoted
                                  else None)
        engine.submit_control(ControlRequest(RetrainDone(outcome, done), "scheduler",
                                             Channel.JOBS))

    return job


async def run_child(cmd: list[str], env: Mapping[str, str]) -> tuple[int, str]:
    """Run a child process; its exit status and the tail of what it printed, scrubbed: the
    tail goes into the audit trail, and no secret may ride along in it."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, env=env)
    out, _ = await proc.communicate()
    return int(proc.returncode or 0), scrub(out.decode(errors="replace")[-2000:])


def retrain_commands(settings: Any, folder: Path, since: str) -> tuple[list[str], list[str]]:
    """The retrain's two child processes: download fresh history, then train on it. No
    credential is an argument: the children read them from ``child_env``."""
    ex = settings.exchange
    dl = [sys.executable, "-m", "bot", "download", "--exchange", ex.name, "--symbols",
          ",".join(settings.symbols), "--timeframe", settings.timeframe, "--since", since,
          "--out", str(folder)]
    if ex.url:
        dl += ["--exchange-url", ex.url]
    files = [a for s in settings.symbols for a in
             ("--data", str(folder / f"{s.replace('/', '_')}-{settings.timeframe}.csv"))]
    train = [sys.executable, "-m", "bot", "train", *files, "--timeframe", settings.timeframe,
             "--preset", "quick", "--promote", "if-better", "--data-dir", str(settings.home)]
    return dl, train


def child_env(parent: Mapping[str, str], settings: Any, db_url: str) -> dict[str, str]:
    """The environment of the retrain's child processes. The database URL, password and all,
    travels here and never on the command line, which any local user can read from the
    process list. The retrained models must price the bet this process trades: its barriers,
    whatever config file or environment set them."""
    r = settings.risk
    register_secrets([password_of(db_url)])
    # the service's login only: a child never needs the schema owner
    parent = {k: v for k, v in parent.items() if k.upper() != "STACKBOT_DATABASE_MIGRATE_URL"}
    return {**parent, "STACKBOT_DATABASE_URL": db_url,
            "STACKBOT_RISK_K_STOP": str(r.k_stop), "STACKBOT_RISK_K_TARGET": str(r.k_target),
            "STACKBOT_RISK_BARRIER_HORIZON": str(r.barrier_horizon)}


async def _load_active(db_url: str, settings: Any) -> Any:
    from pathlib import Path

    from bot.ledger.model_versions import active_ensemble
    from bot.ledger.repository import make_engine
    from models.device import in_torch_thread, pick_device
    from models.ensemble import Ensemble
    from models.labels import barrier_from

    eng = make_engine(db_url)
    try:
        active = await active_ensemble(eng)
    finally:
        await eng.dispose()
    assert active is not None
    # on the torch thread, the one that scores with it: off the event loop
    return await in_torch_thread(Ensemble.load, Path(active.path), active.sha256,
                                 barrier_from(settings.risk),
                                 pick_device(settings.strategy.device), settings.strategy.compile)


def heartbeat_job(engine: Engine, bus: Any) -> Any:
    async def beat() -> None:
        bus.publish("heartbeat", {
            "ts": int(time.time() * 1000), "state": engine.risk.machine.state.value,
            "equity": str(engine.portfolio.equity()), "candles": engine.stats.candles,
            "ledger_ok": engine.ledger_ok})

    return beat
