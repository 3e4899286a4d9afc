"""Leave-one-area-out scores: each real area segmented by a model that never saw it.

``footprints loao --runs DIR --data ROOT ...`` reads ``DIR/loao-<area>/model.pt``
(trained with ``--holdout <area>``), segments every tile of that area through the
tiling engine, as served (resampled to the model's resolution and back), and pools IoU
per area and over all held-out areas, the benchmark's way. With ``--compare NAME[:V]``
a store model (e.g. the synthetic-trained amll v3) is scored on the same tiles beside it.

``--resolutions 0.3,0.15,0.6`` scores each area again as imagery of those ground
resolutions would show it: the real zoom-20 imagery of the same places where
``--fine-data`` has it (real-oam-z20: zanzibar, kampala, nepal at about 0.15 m), else the
area's tiles resampled (imagery with the serving resampler, masks by majority).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.engines import open_engine
from service.engines.pytorch import TorchEngine
from service.store.repository import ModelStore
from service.tiling.engine import TilingEngine

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


def _resampled_tile(tile: Tile, target_m: float, cache: Path) -> Tile:
    """``tile`` as imagery of ``target_m`` per pixel would show it (its georeference
    scaled to match): imagery through the serving resampler, its mask by majority."""
    import rasterio

    from service.rasters import ground_resolution, write_geotiff
    from service.tiling.resample import AxisMap, resample_image

    assert tile.gt is not None
    image, gt = cache / "images" / tile.image.name, cache / "gt" / tile.image.name
    if image.is_file() and gt.is_file():
        return Tile(tile.city, tile.index, image, gt, tile.split)
    with rasterio.open(tile.image) as src, rasterio.open(tile.gt) as ref:
        gx, gy = ground_resolution(src.crs, src.transform, src.width, src.height) or (0.3, 0.3)
        shape = (max(1, round(src.height * gy / target_m)), max(1, round(src.width * gx / target_m)))
        rgb = resample_image(src.read([1, 2, 3]), shape)
        mask = ref.read(1).astype(np.float32) / 255.0
        rows, cols = AxisMap(shape[0], mask.shape[0]), AxisMap(shape[1], mask.shape[1])
        share = cols.apply(rows.apply(mask, 0, 0, shape[0], axis=0), 0, 0, shape[1], axis=1)
        transform = src.transform * src.transform.scale(src.width / shape[1], src.height / shape[0])
        crs = src.crs
    write_geotiff(image, rgb, crs=crs, transform=transform)
    write_geotiff(gt, np.where(share >= 0.5, 255, 0).astype(np.uint8), crs=crs, transform=transform)
    return Tile(tile.city, tile.index, image, gt, tile.split)


def at_resolution(areas: dict[str, list[Tile]], target_m: float, fine: Sequence[Root], cache: Path) -> dict[str, list[Tile]]:
    """Each area's tiles at ``target_m``: real imagery of that resolution from ``fine``
    roots where they hold the same tiles, else resampled (0.3 m: the tiles as they are)."""
    if abs(target_m - 0.3) < 1e-9:
        return areas
    real: dict[str, Tile] = {}
    for root in fine:
        for t in InriaDataset(root.path).tiles:
            if t.gt is not None:
                real[t.name] = t
    out = {}
    for area, tiles in areas.items():
        if target_m < 0.3 and all(t.name in real for t in tiles):
            out[area] = [real[t.name] for t in tiles]
        else:
            out[area] = [_resampled_tile(t, target_m, cache / f"{target_m}m" / area) for t in tiles]
    return out


def leave_one_area_out(
    runs: Path,
    roots: Sequence[Root],
    same_area: Sequence[Sequence[str]],
    compare: str | None = None,
    store: Path = Path("model_store"),
    overlays: Path | None = None,
    resolutions: Sequence[float] = (0.3,),
    fine: Sequence[Root] = (),
    cache: Path | None = None,
) -> dict[str, Any]:
    """Per resolution and area: the held-out model's counts (and the comparison model's).
    Rows are labelled ``held out`` (and the comparison's) at 0.3 m, ``... at R m`` else."""
    import tempfile

    base = area_tiles(roots, same_area)
    cache = cache or Path(tempfile.mkdtemp(prefix="footprints-loao-"))
    results: dict[str, Any] = {}
    for r in resolutions:
        rows = _one_resolution(
            runs, at_resolution(base, r, fine, cache), compare, store, overlays if r == resolutions[0] else None
        )
        suffix = "" if abs(r - 0.3) < 1e-9 else f" at {r:g} m"
        results.update({f"{label}{suffix}": cells for label, cells in rows.items()})
    return results


def _one_resolution(
    runs: Path, areas: dict[str, list[Tile]], compare: str | None, store: Path, overlays: Path | None
) -> dict[str, Any]:
    held_out: dict[str, Counts] = {}
    rows = {"held out": held_out}
    other: tuple[TilingEngine, dict[str, Counts]] | None = None
    if compare:
        name, _, version = compare.partition(":")
        entry = ModelStore(store).get(name, int(version) if version else None)
        other = TilingEngine(open_engine(entry, "onnxruntime")), {}
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
        held_out[area] = score(TilingEngine(TorchEngine(model, "cpu")), tiles, overlays).overall
        if other is not None:
            other[1][area] = score(other[0], tiles).overall
    return {label: {**cells, "overall": pooled(list(cells.values()))} for label, cells in rows.items()}


def table(results: dict[str, dict[str, Counts]], labels: dict[str, str] | None = None) -> str:
    """IoU % / accuracy % per area, pooled over the held-out areas, and the worst area's
    IoU, one row a model (and resolution)."""
    areas = [a for a in next(iter(results.values())) if a != "overall"]
    head = ["model", *areas, "Overall (held-out areas pooled)", "worst area"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, cells in results.items():
        shown = (labels or {}).get(label, label)
        present = [a for a in areas if a in cells]
        worst = min(present, key=lambda a: cells[a].iou) if present else None
        row = [f"{100 * cells[a].iou:.2f} / {100 * cells[a].accuracy:.2f}" if a in cells else "-" for a in [*areas, "overall"]]
        lines.append("| " + " | ".join([shown, *row, f"{worst} {100 * cells[worst].iou:.2f}" if worst else "-"]) + " |")
    return "\n".join(lines)


def as_json(results: dict[str, dict[str, Counts]]) -> str:
    return json.dumps({label: {a: c.as_dict() for a, c in cells.items()} for label, cells in results.items()}, indent=2) + "\n"
