"""A registered ensemble's files as the process that trades it reads them: the manifest,
checked (its sha256 and the bet it was trained for), its members loaded from their checkpoints
(torch), and ``Described``: what combining their outputs needs of them without their
weights, which a CPU backtest's look-ahead process hands back once it has loaded them
(``models/ahead_worker.py``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.labels import BarrierSpec, barrier_spec_of
from models.meta import LogitMoments
from models.registry import RegistryError, barrier_mismatch, load_member, sha256

if TYPE_CHECKING:
    from models.members import Member


@dataclass(frozen=True)
class Described:
    """What the combiner needs of the members, without their weights (so without torch):
    names, calibration temperatures, which forecast the return (the supervised ones), which
    are cross-sectional, and the VAE's number of regimes (0: no VAE)."""

    names: tuple[str, ...]
    temperatures: tuple[float, ...]
    forecasters: tuple[bool, ...]
    cross: tuple[int, ...]
    regimes: int

    @classmethod
    def of(cls, members: Sequence[Member], temperatures: Sequence[float]) -> Described:
        from models.members.vae import VAERegime

        vae = next((m for m in members if m.name == "vae"), None)
        return cls(tuple(m.name for m in members), tuple(float(t) for t in temperatures),
                   tuple(m.kind == "supervised" for m in members),
                   tuple(i for i, m in enumerate(members) if m.cross_sectional),
                   vae.k if isinstance(vae, VAERegime) else 0)


def checked_spec(manifest: Path, expected_sha256: str | None,
                  barrier: BarrierSpec) -> dict[str, Any]:
    """A registered ensemble's manifest: its sha256 checked, and refused where it was trained
    for another bet than ``barrier``."""
    if expected_sha256 is not None and sha256(manifest) != expected_sha256:
        raise RegistryError(f"{manifest} does not match its registered sha256")
    spec: dict[str, Any] = json.loads(manifest.read_text())
    trained = barrier_spec_of(spec)
    if trained != barrier:
        raise RegistryError(
            barrier_mismatch(f"ensemble {spec.get('ensemble_id')}", spec.get("barrier"), barrier))
    return spec


def load_members(manifest: Path, spec: dict[str, Any],
                  barrier: BarrierSpec) -> list[tuple[Member, float]]:
    """Each member and its temperature (torch), each checkpoint checked (``load_member``)."""
    return [load_member(manifest.parent / m["path"], m["sha256"], barrier)
            for m in spec["members"]]


def moments_of(spec: dict[str, Any]) -> LogitMoments | None:
    return LogitMoments.from_dict(spec["logit_moments"]) if spec.get("logit_moments") else None
