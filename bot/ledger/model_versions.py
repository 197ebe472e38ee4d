"""The model registry's rows in ``model_versions``: register, promote, list, and the active
ensemble. Each change commits with its audit event. The checkpoint files themselves are
``models/registry.py``'s business."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import ActiveModel, AuditEvent, ModelVersion
from bot.errors import RegistryError
from bot.ledger import tables as t
from bot.ledger.rows import json_text


async def register(engine: AsyncEngine, ensemble_id: str, rows: Sequence[Mapping[str, Any]]
                   ) -> None:
    """An ensemble's rows (its members' and its own, from ``models.registry.save_ensemble``),
    registered as candidates, with their audit event, in one transaction."""
    async with engine.begin() as conn:
        plain = [{**r, "metrics": _plain(r["metrics"]),
                  "hyperparameters": _plain(r["hyperparameters"])} for r in rows]
        await conn.execute(pg_insert(t.ModelVersionRow), plain)
        await _audit(conn, "model.registered", ensemble_id,
                     {"members": [r["architecture"] for r in rows]})


def _plain(value: Any) -> Any:
    """JSON-safe copy (numpy scalars, tuples, paths) for a JSONB column."""
    return json.loads(json_text(value))


async def _audit(conn: Any, kind: str, ensemble_id: str, payload: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    ev = AuditEvent(kind, "model", ensemble_id, "registry", "registry",
                    int(now.timestamp() * 1000), payload)
    await conn.execute(insert(t.AuditEventRow).values(
        account=ev.account, run_id=ev.run_id, ts=now, kind=ev.kind, entity=ev.entity,
        entity_id=ev.entity_id, payload=json.loads(json_text(ev.payload))))


async def promote(engine: AsyncEngine, ensemble_id: str, reason: str = "operator") -> None:
    """Make ``ensemble_id`` the active ensemble; the previous one is retired. One transaction."""
    async with engine.begin() as conn:
        found = (await conn.execute(select(t.ModelVersionRow.id).where(
            t.ModelVersionRow.id == ensemble_id,
            t.ModelVersionRow.architecture == "ensemble"))).scalar()
        if found is None:
            raise RegistryError(f"no ensemble {ensemble_id!r} in the registry "
                                "(`stackbot models list` shows the ids)")
        await conn.execute(update(t.ModelVersionRow).where(t.ModelVersionRow.status == "active")
                           .values(status="retired"))
        await conn.execute(update(t.ModelVersionRow)
                           .where(t.ModelVersionRow.ensemble_id == ensemble_id)
                           .values(status="active", promoted_at=datetime.now(UTC)))
        await _audit(conn, "model.promoted", ensemble_id, {"reason": reason})


def test_accuracy(metrics: Mapping[str, Any]) -> float | None:
    """Out-of-sample accuracy from a version's metrics: calibrated where it was measured."""
    acc = (metrics.get("test_calibrated") or metrics.get("test") or {}).get("accuracy")
    return float(acc) if isinstance(acc, (int, float)) else None


async def list_versions(engine: AsyncEngine) -> list[ModelVersion]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(
            t.ModelVersionRow.id, t.ModelVersionRow.architecture, t.ModelVersionRow.status,
            t.ModelVersionRow.symbols, t.ModelVersionRow.timeframe, t.ModelVersionRow.train_end,
            t.ModelVersionRow.metrics, t.ModelVersionRow.created_at)
            .order_by(t.ModelVersionRow.created_at.desc(), t.ModelVersionRow.id))).all()
    return [ModelVersion(r.id, r.architecture, r.status, tuple(r.symbols or ()), r.timeframe,
                         r.train_end, r.metrics or {}, r.created_at) for r in rows]


async def active_ensemble(engine: AsyncEngine) -> ActiveModel | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(t.ModelVersionRow).where(
            t.ModelVersionRow.architecture == "ensemble",
            t.ModelVersionRow.status == "active"))).first()
    if row is None:
        return None
    return ActiveModel(row.id, row.checkpoint_path, row.checkpoint_sha256, row.metrics or {})
