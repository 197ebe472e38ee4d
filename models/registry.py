"""The model registry: checkpoints on disk (state dicts plus metadata, loaded with
``weights_only=True`` and checked against their sha256) and their rows in ``model_versions``.

The unit of promotion is an ensemble: its member rows and its own row (architecture
``ensemble``, with the meta-learner's weights) share an ``ensemble_id``. Exactly one ensemble
is active at a time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.domain import AuditEvent
from bot.errors import StackbotError
from bot.ledger import tables as t
from bot.ledger.repository import _json, to_dt
from models.features import FEATURE_NAMES, feature_spec_hash
from models.labels import BarrierSpec
from models.members import REGISTRY, Member, MemberConfig


class RegistryError(StackbotError):
    """A checkpoint is missing, altered, or does not fit this code's feature definition."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_member(model: Member, path: Path, temperature: float, barrier: BarrierSpec) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(),
                "meta": {"name": model.name, "config": model.cfg.to_dict(),
                         "temperature": float(temperature), "barrier": barrier.to_dict(),
                         "feature_spec_hash": feature_spec_hash(barrier)}}, path)
    return sha256(path)


def load_member(path: Path, expected_sha256: str | None,
                barrier: BarrierSpec) -> tuple[Member, float]:
    """A member and its calibration temperature; refuses altered or foreign checkpoints and
    one trained for other barriers than ``barrier`` (the risk settings it would trade with)."""
    if not path.exists():
        raise RegistryError(f"checkpoint {path} does not exist")
    if expected_sha256 is not None and sha256(path) != expected_sha256:
        raise RegistryError(f"checkpoint {path} does not match its registered sha256")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    if meta["feature_spec_hash"] != feature_spec_hash(barrier):
        raise RegistryError(barrier_mismatch(str(path), meta.get("barrier"), barrier)
                            if meta.get("barrier") not in (None, barrier.to_dict()) else
                            f"{path} was trained on feature spec {meta['feature_spec_hash']}, "
                            f"this code computes {feature_spec_hash(barrier)}: retrain it with "
                            "`stackbot train`")
    model = REGISTRY[meta["name"]](MemberConfig(**meta["config"]))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, float(meta["temperature"])


def barrier_mismatch(what: str, trained: Any, expected: BarrierSpec) -> str:
    have = BarrierSpec.from_dict(trained).describe() if isinstance(trained, dict) else "no barriers"
    return (f"{what} was trained for {have}, but the risk settings trade "
            f"{expected.describe()} (risk.k_target, risk.k_stop, risk.barrier_horizon): its "
            "probabilities answer another bet. Retrain with `stackbot train`, or set the risk "
            "settings back")


@dataclass(frozen=True)
class Bundle:
    """An ensemble as saved: the rows to register and where its files are."""

    ensemble_id: str
    directory: Path
    rows: list[dict[str, Any]]


def save_ensemble(result: Any, root: Path, timeframe: str, created: datetime | None = None) -> Bundle:
    """Write every member's checkpoint and the ensemble's manifest; build registry rows."""
    created = created or datetime.now(UTC)
    stamp = created.strftime("%Y%m%d%H%M%S")
    ensemble_id = f"ens-{stamp}-{hashlib.sha256(str(created.timestamp()).encode()).hexdigest()[:6]}"
    directory = root / ensemble_id
    parts = result.parts
    t0, t1 = parts.split_ts["train"]
    barrier = BarrierSpec(result.config.k_stop, result.config.k_target, result.config.horizon)
    common = {"ensemble_id": ensemble_id, "feature_spec_hash": feature_spec_hash(barrier),
              "symbols": list(result.symbols), "timeframe": timeframe,
              "train_start": to_dt(t0), "train_end": to_dt(t1), "status": "candidate"}
    cfg = dict(vars(result.config))
    rows, members = [], []
    for m in result.members:
        path = directory / f"{m.name}.pt"
        digest = save_member(m.model, path, m.temperature, barrier)
        vid = f"{m.name}-{stamp}"
        members.append({"id": vid, "name": m.name, "path": path.name, "sha256": digest,
                        "temperature": m.temperature})
        rows.append({**common, "id": f"{ensemble_id}/{vid}", "architecture": m.name,
                     "hyperparameters": {**m.model.cfg.to_dict(), "train": cfg},
                     "metrics": m.metrics, "checkpoint_path": str(path),
                     "checkpoint_sha256": digest})
    manifest = {"ensemble_id": ensemble_id, "members": members,
                "meta_weights": [float(w) for w in result.meta_weights],
                "meta_bias": float(result.meta_bias),
                "logit_moments": result.moments.to_dict() if result.moments else None,
                "lookback": result.config.lookback,
                "horizon": result.config.horizon, "cost": result.config.cost,
                "barrier": barrier.to_dict(),
                "features": list(FEATURE_NAMES), "feature_spec_hash": feature_spec_hash(barrier),
                "timeframe": timeframe, "symbols": list(result.symbols), "split": parts.split_ts}
    mpath = directory / "ensemble.json"
    mpath.write_text(json.dumps(manifest, indent=2))
    rows.append({**common, "id": ensemble_id, "architecture": "ensemble",
                 "hyperparameters": {"members": [m["id"] for m in members],
                                     "meta_weights": manifest["meta_weights"],
                                     "meta_bias": manifest["meta_bias"], "train": cfg},
                 "metrics": result.meta_metrics, "checkpoint_path": str(mpath),
                 "checkpoint_sha256": sha256(mpath)})
    return Bundle(ensemble_id, directory, rows)


async def register(engine: AsyncEngine, bundle: Bundle) -> None:
    async with engine.begin() as conn:
        rows = [{**r, "metrics": _plain(r["metrics"]),
                 "hyperparameters": _plain(r["hyperparameters"])} for r in bundle.rows]
        await conn.execute(pg_insert(t.ModelVersionRow), rows)
        await _audit(conn, "model.registered", bundle.ensemble_id,
                     {"members": [r["architecture"] for r in bundle.rows]})


def _plain(value: Any) -> Any:
    """JSON-safe copy (numpy scalars, tuples, paths) for a JSONB column."""
    return json.loads(_json(value))


async def _audit(conn: Any, kind: str, ensemble_id: str, payload: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    ev = AuditEvent(kind, "model", ensemble_id, "registry", "registry",
                    int(now.timestamp() * 1000), payload)
    await conn.execute(t.AuditEventRow.__table__.insert().values(
        account=ev.account, run_id=ev.run_id, ts=now, kind=ev.kind, entity=ev.entity,
        entity_id=ev.entity_id, payload=json.loads(_json(ev.payload))))


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


async def list_versions(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(
            t.ModelVersionRow.id, t.ModelVersionRow.architecture, t.ModelVersionRow.status,
            t.ModelVersionRow.symbols, t.ModelVersionRow.timeframe, t.ModelVersionRow.train_end,
            t.ModelVersionRow.metrics, t.ModelVersionRow.created_at)
            .order_by(t.ModelVersionRow.created_at.desc(), t.ModelVersionRow.id))).mappings().all()
    return [dict(r) for r in rows]


async def active_ensemble(engine: AsyncEngine) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(t.ModelVersionRow).where(
            t.ModelVersionRow.architecture == "ensemble",
            t.ModelVersionRow.status == "active"))).first()
    if row is None:
        return None
    return {"id": row.id, "path": row.checkpoint_path, "sha256": row.checkpoint_sha256,
            "metrics": row.metrics}
