"""The model registry's files: checkpoints on disk (state dicts plus metadata, loaded with
``weights_only=True`` and checked against their sha256) and the rows that describe them. The
rows are stored by the ledger (``bot/ledger/model_versions.py``).

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
from typing import TYPE_CHECKING, Any

from bot.errors import RegistryError
from models.features import FEATURE_NAMES, feature_spec_hash
from models.labels import BarrierSpec

if TYPE_CHECKING:
    from models.members import Member

# torch and the members are imported where a checkpoint is written or read: a CPU backtest's
# process checks the manifest here and leaves the weights to its look-ahead processes
# (models/ahead_worker.py), without torch's import (1.5 s of CPU)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_member(model: Member, path: Path, temperature: float, barrier: BarrierSpec) -> str:
    import torch

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
    import torch

    from models.members import REGISTRY, MemberConfig

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


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def save_ensemble(
    result: Any, root: Path, timeframe: str, created: datetime | None = None
) -> Bundle:
    """Write every member's checkpoint and the ensemble's manifest; build registry rows."""
    created = created or datetime.now(UTC)
    stamp = created.strftime("%Y%m%d%H%M%S")
    ensemble_id = f"ens-{stamp}-{hashlib.sha256(str(created.timestamp()).encode()).hexdigest()[:6]}"
    directory = root / ensemble_id
    parts = result.parts
    t0, t1 = parts.split_ts["train"]
    barrier = BarrierSpec(result.config.k_stop, result.config.k_target, result.config.horizon)
    common = {
        "ensemble_id": ensemble_id,
        "feature_spec_hash": feature_spec_hash(barrier),
        "symbols": list(result.symbols),
        "timeframe": timeframe,
        "train_start": _utc(t0),
        "train_end": _utc(t1),
        "status": "candidate",
    }
    cfg = dict(vars(result.config))
    rows, members = [], []
    for m in result.members:
        path = directory / f"{m.name}.pt"
        digest = save_member(m.model, path, m.temperature, barrier)
        vid = f"{m.name}-{stamp}"
        members.append(
            {
                "id": vid,
                "name": m.name,
                "path": path.name,
                "sha256": digest,
                "temperature": m.temperature,
            }
        )
        rows.append(
            {
                **common,
                "id": f"{ensemble_id}/{vid}",
                "architecture": m.name,
                "hyperparameters": {**m.model.cfg.to_dict(), "train": cfg},
                "metrics": m.metrics,
                "checkpoint_path": str(path),
                "checkpoint_sha256": digest,
            }
        )
    manifest = {
        "ensemble_id": ensemble_id,
        "members": members,
        "meta_weights": [float(w) for w in result.meta_weights],
        "meta_bias": float(result.meta_bias),
        "logit_moments": result.moments.to_dict() if result.moments else None,
        "lookback": result.config.lookback,
        "horizon": result.config.horizon,
        "cost": result.config.cost,
        "barrier": barrier.to_dict(),
        "features": list(FEATURE_NAMES),
        "feature_spec_hash": feature_spec_hash(barrier),
        "timeframe": timeframe,
        "symbols": list(result.symbols),
        "split": parts.split_ts,
    }
    mpath = directory / "ensemble.json"
    mpath.write_text(json.dumps(manifest, indent=2))
    rows.append(
        {
            **common,
            "id": ensemble_id,
            "architecture": "ensemble",
            "hyperparameters": {
                "members": [m["id"] for m in members],
                "meta_weights": manifest["meta_weights"],
                "meta_bias": manifest["meta_bias"],
                "train": cfg,
            },
            "metrics": result.meta_metrics,
            "checkpoint_path": str(mpath),
            "checkpoint_sha256": sha256(mpath),
        }
    )
    return Bundle(ensemble_id, directory, rows)
