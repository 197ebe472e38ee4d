"""Training as the application runs it (``stackbot train``, and the retrain job through it):
train with progress bars, save and register the checkpoints, and promote by the rule asked
for, comparing with the active version as live would score both."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bot.domain import CandleSeries
from bot.errors import RegistryError
from bot.ledger.model_versions import active_ensemble, promote, register
from models.dataset import symbol_data
from models.device import pick_device
from models.ensemble import Ensemble
from models.labels import BarrierSpec
from models.members import REGISTRY
from models.promotion import compare_live
from models.registry import save_ensemble
from models.train import PRESETS, TrainConfig, TrainResult, barrier_of, train_ensemble, with_barrier


def members_from(arg: str | None) -> list[str]:
    if not arg:
        return list(REGISTRY)
    names = [n.strip() for n in arg.split(",") if n.strip() and n.strip() != "meta"]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {', '.join(REGISTRY)}, meta")
    return names


def run_training(series: Sequence[CandleSeries], timeframe: str, preset: str,
                 members: Sequence[str], device: str, barrier: BarrierSpec,
                 seed: int | None = None) -> TrainResult:
    cfg: TrainConfig = PRESETS[preset]
    cfg = with_barrier(TrainConfig(**{**vars(cfg), "device": pick_device(device),
                                      **({"seed": seed} if seed is not None else {})}), barrier)
    data = [symbol_data(s, barrier) for s in series]
    with Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ) as progress:
        tasks: dict[str, Any] = {}
        current: list[str] = []

        def on_member(name: str, what: str) -> None:
            if what == "start":
                tasks[name] = progress.add_task(name, total=cfg.epochs, info="training")
                current[:] = [name]
                started[name] = time.perf_counter()
            else:
                progress.update(
                    tasks[name],
                    completed=cfg.epochs,
                    info=f"done in {time.perf_counter() - started[name]:.1f}s",
                )

        started: dict[str, float] = {}

        def tick() -> None:
            if current:
                progress.advance(tasks[current[0]])

        return train_ensemble(data, cfg, members, on_member, tick)


async def store(
    engine: Any,
    result: TrainResult,
    root: Path,
    timeframe: str,
    promote_mode: str,
    series: Sequence[CandleSeries],
) -> tuple[str, Path, bool, str]:
    """Save and register; promote per ``promote_mode`` (always | if-none | if-better | never).
    ``series`` are the candles it was trained on (if-better scores both versions on their
    held-out test part). Returns (ensemble id, checkpoint dir, promoted?, why)."""
    bundle = save_ensemble(result, root, timeframe)
    await register(engine, bundle.ensemble_id, bundle.rows)
    current = await active_ensemble(engine)
    why = ""
    if promote_mode == "always":
        ok, why = True, "asked to promote"
    elif promote_mode == "if-none":
        ok, why = (
            current is None,
            "no active ensemble" if current is None else "an ensemble is active",
        )
    elif promote_mode == "if-better":
        if current is None:
            ok, why = True, "no active ensemble"
        else:
            ok, why = await better_than_active(
                result,
                bundle.directory / "ensemble.json",
                series,
                timeframe,
                Path(current.path),
                current.sha256,
            )
    else:
        ok, why = False, "not asked to promote"
    if ok:
        await promote(engine, bundle.ensemble_id, reason=why)
    return bundle.ensemble_id, bundle.directory, ok, why


async def better_than_active(
    result: TrainResult,
    manifest: Path,
    series: Sequence[CandleSeries],
    timeframe: str,
    active: Path,
    active_sha: str,
) -> tuple[bool, str]:
    """Promote only when the new version's log-loss beats the active one's on the same held-out
    test windows, both scored as they would trade live (``models/promotion.py``)."""
    barrier = barrier_of(result.config)
    try:
        old = Ensemble.load(active, active_sha, barrier)
    except RegistryError as exc:  # e.g. trained for other barriers: it cannot trade these
        return True, f"the active ensemble cannot trade these risk settings ({exc})"
    new = Ensemble.load(manifest, None, barrier)
    t0, t1 = result.parts.split_ts["test"]
    c = await compare_live(new, old, series, timeframe, t0, t1)
    if c.n == 0:
        return False, "no test windows with an outcome that both versions scored"
    scored = (
        f"on the same {c.n} held-out windows, scored as live (a timestamp at a time, "
        "online re-weighting on)"
    )
    if c.new_is_better:
        return True, (
            f"test log-loss {c.new_log_loss:.5f} beats the active {c.old_log_loss:.5f} {scored}"
        )
    return False, (
        f"test log-loss {c.new_log_loss:.5f} does not beat the active {c.old_log_loss:.5f} {scored}"
    )
