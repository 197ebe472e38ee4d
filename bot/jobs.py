"""Recurring jobs (APScheduler's AsyncIOScheduler, UTC). Jobs that write go through the
engine's queue, so the engine stays the only writer; the heartbeat only reads.

Each job coalesces missed runs and has a misfire grace period, so a restart never runs a
missed job twice.
"""

from __future__ import annotations

import time
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.config import JobSettings
from bot.engine import Engine
from bot.ports import ControlRequest


def _queue(engine: Engine, action: str) -> Any:
    async def job() -> None:
        engine.submit_control(ControlRequest(action=action, reason="scheduled",
                                             operator="scheduler", channel="jobs"))

    job.__name__ = f"queue_{action}"
    return job


def build_scheduler(engine: Engine, cfg: JobSettings, heartbeat: Any = None,
                    heartbeat_s: float = 15.0) -> AsyncIOScheduler:
    sched = AsyncIOScheduler(timezone="UTC", job_defaults={
        "coalesce": True, "max_instances": 1, "misfire_grace_time": cfg.misfire_grace_s})
    sched.add_job(_queue(engine, "snapshot"), IntervalTrigger(seconds=cfg.equity_snapshot_s),
                  id="equity_snapshot")
    sched.add_job(_queue(engine, "tick"), IntervalTrigger(seconds=cfg.housekeeping_s),
                  id="risk_housekeeping")
    sched.add_job(_queue(engine, "tick"), CronTrigger(hour=0, minute=0, timezone="UTC"),
                  id="daily_risk_reset")
    sched.add_job(_queue(engine, "model_check"),
                  CronTrigger.from_crontab(cfg.model_check_cron, timezone="UTC"),
                  id="model_degradation_check")
    sched.add_job(_queue(engine, "retrain"),
                  CronTrigger.from_crontab(cfg.retrain_cron, timezone="UTC"), id="retrain")
    if heartbeat is not None:
        sched.add_job(heartbeat, IntervalTrigger(seconds=heartbeat_s), id="heartbeat")
    return sched


def heartbeat_job(engine: Engine, bus: Any) -> Any:
    async def beat() -> None:
        bus.publish("heartbeat", {
            "ts": int(time.time() * 1000), "state": engine.risk.machine.state.value,
            "equity": str(engine.portfolio.equity()), "candles": engine.stats.candles,
            "ledger_ok": engine.ledger_ok})

    return beat
