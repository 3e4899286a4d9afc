"""Leave-one-area-out scores: each real area segmented by a model that never saw it.

``footprints loao --runs DIR --data ROOT ...`` reads ``DIR/loao-<area>/model.pt``
(trained with ``--holdout <area>``), segments every tile of that area through the
tiling engine, as served, at the tile's own resolution, and pools IoU per area and
over all held-out areas, the benchmark's way. With ``--compare NAME[:V]`` a store
model (e.g. the synthetic-trained amll v3) is scored on the same tiles beside it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from service.backends import open_backend
from service.backends.torch_backend import TorchBackend
from service.store import ModelStore
from service.tiler import TilingEngine

from .data.inria import InriaDataset, Tile
from .data.sources import Root, area_of
from .metric import Counts, pooled
from .networks.model import load_checkpoint
from .publish import score


def area_tiles(roots: Sequence[Root], same_area: Sequence[Sequence[str]]) -> dict[str, list[Tile]]:
    """Every labelled tile of ``roots``, by area."""
    out: dict[str, list[Tile]] = {}
    for root in roots:
        for t in InriaDataset(root.path).tiles:
            if t.gt is not None:
                out.setdefault(area_of(t.city, same_area), []).append(t)
    return dict(sorted(out.items()))


def leave_one_area_out(
    runs: Path,
    roots: Sequence[Root],
    same_area: Sequence[Sequence[str]],
    compare: str | None = None,
    store: Path = Path("model_store"),
    overlays: Path | None = None,
) -> dict[str, Any]:
    """Per area: the held-out model's counts (and the comparison model's)."""
    areas = area_tiles(roots, same_area)
    held_out: dict[str, Counts] = {}
    rows = {"held out": held_out}
    other: tuple[TilingEngine, dict[str, Counts]] | None = None
    if compare:
        name, _, version = compare.partition(":")
        entry = ModelStore(store).get(name, int(version) if version else None)
        other = TilingEngine(open_backend(entry, "onnxruntime")), {}
        rows[f"{entry.name} v{entry.version}"] = other[1]
    for area, tiles in tqdm(areas.items(), desc="areas", unit="area"):
        run = runs / f"loao-{area.split('+')[0]}" / "model.pt"
        if not run.is_file():
            continue
        model, meta = load_checkpoint(run)
        held = set(meta.get("data", {}).get("holdout_areas", []))
        if not {area, *area.split("+")} & held:
            raise ValueError(f"{run} did not hold out {area} (held out: {sorted(held)}); it cannot score that area")
        # The device's default window, as served; one overlay per held-out city.
        held_out[area] = score(TilingEngine(TorchBackend(model, "cpu")), tiles, overlays).overall
        if other is not None:
            other[1][area] = score(other[0], tiles).overall
    return {label: {**cells, "overall": pooled(list(cells.values()))} for label, cells in rows.items()}


def table(results: dict[str, dict[str, Counts]], labels: dict[str, str] | None = None) -> str:
    """IoU % / accuracy % per area and pooled over the held-out areas, one row a model."""
    areas = [a for a in next(iter(results.values())) if a != "overall"]
    head = ["model", *areas, "Overall (held-out areas pooled)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, cells in results.items():
        shown = (labels or {}).get(label, label)
        lines.append(
            "| "
            + " | ".join([shown, *(f"{100 * cells[a].iou:.2f} / {100 * cells[a].accuracy:.2f}" for a in [*areas, "overall"])])
            + " |"
        )
    return "\n".join(lines)


def as_json(results: dict[str, dict[str, Counts]]) -> str:
    return json.dumps({label: {a: c.as_dict() for a, c in cells.items()} for label, cells in results.items()}, indent=2) + "\n"
