"""``footprints finetune``: a store model adapted to a few labelled tiles of the user's own
area, within a time budget, and published into the store as a new model or version.

What HOT's fAIr does for its users: they label a few buildings of their area and a base
model learns them. Here the base is a store version's training checkpoint; the tiles may
be in the Inria or the flat layout, at any resolution (they are brought to the model's, as
serving does); the recipe is the base's own, with its augmentation, at a lower learning
rate and a schedule sized to ``--minutes`` on this machine (a few steps are timed first).
The new version gets a card like any other: its data, recipe, minutes and base.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.errors import InputError
from service.store.repository import ModelStore

from .config import TrainConfig, config_from_dict
from .data.sources import Root
from .networks.model import load_checkpoint
from .selftrain import pseudo_labelled

# Fine-tuning moves less than training from ImageNet: 0.3x the base recipe's rate, the
# encoder at its factor of that, and no frozen start (the decoder already fits).
LEARNING_RATE_SHARE = 0.3
TIMING_STEPS = 6  # steps timed to size the schedule; the first is not counted
# Shares of --minutes: the schedule is sized to fill the first, the loop stops at the second
# whatever happens, and export and the card take the rest (well under a tenth).
TRAINING_SHARE = 0.9
DEADLINE_SHARE = 0.95
BATCH = 8


def _recipe(meta: dict[str, Any], resolution_m: float, steps: int, log_every: int | None = None) -> TrainConfig:
    """The base's own recipe, fine-tuning: its augmentation, a lower rate, ``steps`` steps."""
    raw = dict(meta.get("config") or {})
    if not raw:
        raise InputError("the base version's checkpoint records no training config to fine-tune with")
    raw["name"] = f"{raw.get('name', 'recipe')}-finetune"
    raw["data"] = {**raw.get("data", {}), "holdout_areas": [], "validation_tile_indices": [], "resample_to_m": resolution_m}
    optim = dict(raw.get("optim", {}))
    optim.update(learning_rate=float(optim.get("learning_rate", 1e-3)) * LEARNING_RATE_SHARE, freeze_encoder_steps=0)
    raw["optim"] = optim
    schedule = dict(raw.get("schedule", {}))
    schedule.update(epochs=1, steps_per_epoch=max(1, steps), checkpoint_every_steps=max(1, steps), validate_every_steps=10**9)
    schedule["batch_size"] = schedule.get("batch_size", BATCH)
    if log_every is not None:
        schedule["log_every_steps"] = log_every
    raw["schedule"] = schedule
    return config_from_dict(raw, f"the recipe of the base ({raw['name']})")


def _seconds_per_step(log_csv: Path) -> float | None:
    """The median step of a probe logged every step, its first step left out: that one
    builds the kernels and took 1.3-1.9x a steady step, which sized schedules to fill only
    half of a 10-minute budget."""
    import csv

    if not log_csv.is_file():
        return None
    with log_csv.open() as f:
        times = [float(r["seconds_per_step"]) for r in csv.DictReader(f) if r.get("seconds_per_step")]
    return statistics.median(times[1:] or times) if times else None


def finetune(
    store: Path,
    model: str,
    roots: Sequence[Root],
    name: str,
    minutes: float = 10.0,
    out_store: Path | None = None,
    run_dir: Path | None = None,
    progress: bool = True,
    unlabelled: Sequence[Root] = (),
) -> dict[str, Any]:
    """Fine-tune ``model`` (``NAME[:V]`` of ``store``) on the labelled ``roots`` and on
    ``unlabelled`` imagery labelled by the base itself (``training/selftrain.py``), within
    ``minutes`` in all, and publish it as ``name`` (its next version) in ``out_store``
    (default: ``store``). Returns what was done: base, version, steps, seconds."""
    from service.store.repository import next_version

    from .export import export
    from .loop import train
    from .publish import write_finetune_card

    t0 = time.perf_counter()
    entry = ModelStore(store).find(model)
    base = entry.verify("model.pt")
    _, meta = load_checkpoint(base)
    if not roots and not unlabelled:
        raise InputError("nothing to fine-tune on: give labelled tiles, unlabelled imagery or both")
    for root in [*roots, *unlabelled]:
        if not root.path.exists():
            raise InputError(f"{root.path}: dataset path does not exist")
    run_dir = run_dir or Path(time.strftime(f"/tmp/footprints-finetune-{name}-%Y%m%d%H%M%S"))
    resolution = entry.manifest.resolution_m
    # The base's own masks label the unlabelled imagery; that time is part of the budget.
    pseudo = pseudo_labelled(entry, unlabelled, run_dir / "pseudo", progress) if unlabelled else []
    tiles = [*roots, *pseudo]
    # Size the schedule: time a few steps on this machine, then fill the budget (less what
    # export and the card take, about a tenth of it).
    train(_recipe(meta, resolution, TIMING_STEPS, log_every=1), tiles, run_dir / "probe", progress=False, init=base)
    per_step = _seconds_per_step(run_dir / "probe" / "log.csv") or (time.perf_counter() - t0) / TIMING_STEPS
    budget_s = minutes * 60 * TRAINING_SHARE - (time.perf_counter() - t0)
    steps = max(TIMING_STEPS, int(budget_s / max(per_step, 1e-3)))
    cfg = _recipe(meta, resolution, steps)
    # The schedule is sized once; a machine that slows afterwards (v2's dhaka took 6.6 of 4
    # minutes on a shared host) would overrun it, so the loop also stops at a deadline.
    deadline = time.monotonic() + minutes * 60 * DEADLINE_SHARE - (time.perf_counter() - t0)
    trained = train(cfg, tiles, run_dir / "run", progress=progress, init=base, deadline=deadline)
    target = out_store or store
    version = next_version(target, name)
    manifest = export(run_dir / "run" / "model.pt", target, name, version)
    seconds = time.perf_counter() - t0
    record = {
        "base": f"{entry.name}:{entry.version}",
        "name": name,
        "version": version,
        "steps": trained["step"],
        "steps_planned": steps,
        "stopped_at_deadline": bool(trained.get("stopped_at_deadline")),
        "seconds": round(seconds, 1),
        "data": [{"path": str(r.path), "weight": r.weight} for r in roots],
        "unlabelled": [{"path": str(r.path), "weight": r.weight} for r in unlabelled],
        "train_tiles": trained.get("data", {}).get("train_tiles", []),
        "resolution_m": resolution,
        "recipe": dataclasses.asdict(cfg),
        "minutes": minutes,
    }
    (target / name / str(version) / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")
    write_finetune_card(target / name / str(version), record, manifest)
    return record
