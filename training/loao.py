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
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.engines import open_engine
from service.engines.base import Engine
from service.engines.ensemble import EnsembleEngine
from service.engines.pytorch import TorchEngine
from service.outputs.instances import separate
from service.store.repository import ModelStore
from service.tiling.engine import EngineConfig, TilingEngine

from .data.inria import InriaDataset, Tile
from .data.sources import Root, area_of
from .metric import Counts, pooled
from .networks.model import load_checkpoint
from .objects import ObjectCounts, components, match
from .publish import score


def labelled_tiles(roots: Sequence[Root]) -> list[Tile]:
    """Every labelled tile of ``roots``."""
    return [t for root in roots for t in InriaDataset(root.path).tiles if t.gt is not None]


def area_tiles(roots: Sequence[Root], same_area: Sequence[Sequence[str]]) -> dict[str, list[Tile]]:
    """Every labelled tile of ``roots``, by area."""
    out: dict[str, list[Tile]] = {}
    for t in labelled_tiles(roots):
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
        transform = src.transform @ src.transform.scale(src.width / shape[1], src.height / shape[0])
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
    runs: Path | Sequence[Path],
    roots: Sequence[Root],
    same_area: Sequence[Sequence[str]],
    compare: str | None = None,
    store: Path = Path("model_store"),
    overlays: Path | None = None,
    resolutions: Sequence[float] = (0.3,),
    fine: Sequence[Root] = (),
    cache: Path | None = None,
    tta_passes: int = 0,
) -> dict[str, Any]:
    """Per resolution and area: the held-out model's counts (and the comparison model's).
    Rows are labelled ``held out`` (and the comparison's) at 0.3 m, ``... at R m`` else.
    Several ``runs`` folders: each area is scored by the equal-weight average of their
    runs that held it out (an ensemble of independently trained runs), and only where
    every folder has one. ``tta_passes`` (2, 4 or 8; 0: none): every window as the average
    of that many dihedral passes, as a request asking for test-time augmentation is served."""
    runs = [runs] if isinstance(runs, Path) else list(runs)
    base = area_tiles(roots, same_area)
    cache = cache or Path(tempfile.mkdtemp(prefix="footprints-loao-"))
    results: dict[str, Any] = {}
    sweeps: dict[str, dict[float, Counts]] = {}
    objects: dict[str, ObjectCounts] = {}
    instances: dict[str, ObjectCounts] = {}
    for r in resolutions:
        rows, sweep, found, split = _one_resolution(
            runs, at_resolution(base, r, fine, cache), compare, store, overlays if r == resolutions[0] else None, tta_passes
        )
        suffix = "" if abs(r - 0.3) < 1e-9 else f" at {r:g} m"
        results.update({f"{label}{suffix}": cells for label, cells in rows.items()})
        sweeps.update({f"{area}{suffix}": counts for area, counts in sweep.items()})
        objects.update({f"{area}{suffix}": o for area, o in found.items()})
        instances.update({f"{area}{suffix}": o for area, o in split.items()})
    if sweeps:
        results[SWEEP] = sweeps  # per area (and resolution): counts at every threshold
        results[OBJECTS] = objects  # per area (and resolution): buildings matched at 0.5
        results[INSTANCES] = instances  # the same, touching buildings separated
    return results


def object_table(results: dict[str, Any]) -> str:
    """Object precision, recall and F1 % of the held-out runs per area at each resolution,
    and pooled over the areas: buildings as the mask's components, and as the instances
    touching buildings are separated into (where scored)."""
    found: dict[str, ObjectCounts] = results.get(OBJECTS, {})
    split: dict[str, ObjectCounts] = results.get(INSTANCES, {})
    by_res: dict[str, dict[str, tuple[ObjectCounts, ObjectCounts | None]]] = {}
    for key, o in found.items():
        area, _, res = key.partition(" at ")
        by_res.setdefault(res or "0.3 m", {})[area] = (o, split.get(key))
    head = "| resolution | area | object precision | object recall | object F1 | separated: precision | recall | F1 |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]

    def cells(o: ObjectCounts | None) -> list[str]:
        return [f"{100 * v:.2f}" for v in (o.precision, o.recall, o.f1)] if o is not None else ["-"] * 3

    for res, areas in by_res.items():
        rows = list(areas.items())
        whole = sum((o for o, _ in areas.values()), ObjectCounts())
        parts = [s for _, s in areas.values() if s is not None]
        rows.append(("pooled", (whole, sum(parts, ObjectCounts()) if len(parts) == len(areas) else None)))
        for area, (o, s) in rows:
            lines.append("| " + " | ".join([res, area, *cells(o), *cells(s)]) + " |")
    return "\n".join(lines)


# Decision thresholds every held-out area is scored at (the 0.5 of the benchmark among them).
THRESHOLDS = tuple(round(0.2 + 0.05 * i, 2) for i in range(13))


def score_sweep(
    engine: TilingEngine, tiles: list[Tile], overlays: Path | None = None
) -> tuple[dict[float, Counts], ObjectCounts, ObjectCounts]:
    """Pooled counts of ``tiles`` at every threshold of :data:`THRESHOLDS`, and their
    buildings matched at 0.5, as the mask's components and as the instances
    :func:`~service.outputs.instances.separate` splits them into, each tile segmented
    once as served (brought to the model's resolution and back); an overlay of each
    city's first tile at 0.5."""
    import rasterio

    from service.outputs.overlay import write_overlay
    from service.outputs.sinks import GeoTiffRows, ProbabilityPlane
    from service.rasters import RGBRaster, ground_resolution
    from service.tiling.pipeline import TileRun

    counts = {t: Counts() for t in THRESHOLDS}
    objects, instances = ObjectCounts(), ObjectCounts()
    first: set[str] = set()
    for tile in tiles:
        with RGBRaster(tile.image) as src:
            plane = ProbabilityPlane(src.width, src.height)
            sinks: list = [plane]
            overlay = overlays is not None and tile.city not in first
            if overlay:
                mask_path = Path(tempfile.mkdtemp(prefix="footprints-sweep-")) / tile.image.name
                sinks.append(GeoTiffRows(mask_path, src.width, src.height, src.crs, src.transform))
            gsd = ground_resolution(src.crs, src.transform, src.width, src.height)
            TileRun(engine, src, sinks, 0.5, gsd).run()
        with rasterio.open(tile.gt) as ref:
            gt = ref.read(1) > 0
        for t in THRESHOLDS:
            counts[t] = counts[t] + Counts.from_masks(plane.plane >= t, gt)
        mask = plane.plane >= 0.5
        reference = components(gt)
        objects += match(*components(mask), *reference)
        instances += match(*separate(mask, plane.plane, sum(gsd) / 2 if gsd else 0.3), *reference)
        if overlay and overlays is not None:
            first.add(tile.city)
            write_overlay(tile.image, mask_path, overlays / f"{tile.name}.png", ref=tile.gt, max_side=600)
    return counts, objects, instances


def choose_threshold(sweep: dict[str, dict[float, Counts]], areas: Sequence[str] | None = None) -> float:
    """The threshold with the best IoU pooled over ``areas`` (default: all of ``sweep``)."""
    chosen = [a for a in (areas if areas is not None else sweep) if a in sweep]
    scored = set.intersection(*(set(sweep[a]) for a in chosen)) if chosen else {0.5}  # every area has each
    return max(sorted(scored), key=lambda t: (pooled([sweep[a][t] for a in chosen]).iou, -abs(t - 0.5)))


def held_out_threshold(results: dict[str, Any]) -> float:
    """The threshold a version serves at: the best IoU pooled over every held-out area at
    every resolution scored (serving meets them all, resampled to the model's), if choosing
    it on held-out data pays: each area scored at the threshold chosen on the other areas
    (that area at any resolution left out) must beat 0.5, pooled. Otherwise, and without a
    sweep, 0.5: a threshold that only fits the areas it was chosen on is noise."""
    sweep = results.get(SWEEP)
    if not sweep:
        return 0.5

    def place(key: str) -> str:
        return key.split(" at ")[0]

    nested = [sweep[a][choose_threshold(sweep, [b for b in sweep if place(b) != place(a)])] for a in sweep]
    at_half = [by_t[0.5] for by_t in sweep.values() if 0.5 in by_t]
    if len(at_half) == len(sweep) and pooled(nested).iou <= pooled(at_half).iou:
        return 0.5
    return choose_threshold(sweep)


def _held_out_engine(runs: Sequence[Path], area: str, tta_passes: int = 0) -> TilingEngine | None:
    """The engine that scores ``area``: its run in each of ``runs`` (averaged where
    several), or None where a folder lacks one."""
    paths = [r / f"loao-{area.split('+')[0]}" / "model.pt" for r in runs]
    if not all(p.is_file() for p in paths):
        return None
    engines: list[Engine] = []
    for run in paths:
        model, meta = load_checkpoint(run)
        held = set(meta.get("data", {}).get("holdout_areas", []))
        if not {area, *area.split("+")} & held:
            raise ValueError(f"{run} did not hold out {area} (held out: {sorted(held)}); it cannot score that area")
        engines.append(TorchEngine(model, "cpu"))
    return TilingEngine(
        engines[0] if len(engines) == 1 else EnsembleEngine.of(engines, f"loao-{area}"),
        EngineConfig(tta_passes=tta_passes or None),
    )


def _one_resolution(
    runs: Sequence[Path],
    areas: dict[str, list[Tile]],
    compare: str | None,
    store: Path,
    overlays: Path | None,
    tta_passes: int = 0,
) -> tuple[dict[str, Any], dict[str, dict[float, Counts]], dict[str, ObjectCounts], dict[str, ObjectCounts]]:
    """Counts at 0.5 per area (held out, and the comparison model), and the held-out
    model's counts at every threshold and its buildings matched at 0.5 (components,
    then separated instances), per area."""
    held_out: dict[str, Counts] = {}
    sweep: dict[str, dict[float, Counts]] = {}
    objects: dict[str, ObjectCounts] = {}
    instances: dict[str, ObjectCounts] = {}
    rows = {"held out": held_out}
    other: tuple[TilingEngine, dict[str, Counts]] | None = None
    if compare:
        name, _, version = compare.partition(":")
        entry = ModelStore(store).get(name, int(version) if version else None)
        other = TilingEngine(open_engine(entry, "onnxruntime")), {}
        rows[f"{entry.name} v{entry.version}"] = other[1]
    for area, tiles in tqdm(areas.items(), desc="areas", unit="area"):
        engine = _held_out_engine(runs, area, tta_passes)
        if engine is None:
            continue
        # As served: its plan window, its resolution; one overlay per held-out city.
        sweep[area], objects[area], instances[area] = score_sweep(engine, tiles, overlays)
        held_out[area] = sweep[area][0.5]
        if other is not None:
            other[1][area] = score(other[0], tiles).overall
    rows = {label: {**cells, "overall": pooled(list(cells.values()))} for label, cells in rows.items()}
    if sweep:
        # The threshold an area would get, chosen on the other areas alone: the score a
        # threshold chosen on held-out data earns, without choosing it on the area itself.
        nested = {a: sweep[a][choose_threshold(sweep, [b for b in sweep if b != a])] for a in sweep}
        rows["held out, threshold chosen on the other areas"] = {**nested, "overall": pooled(list(nested.values()))}
    return rows, sweep, objects, instances


SWEEP = "thresholds"  # the results' key for per-area counts at every threshold
OBJECTS = "objects"  # and for per-area buildings matched at 0.5 (the mask's components)
INSTANCES = "instances"  # and as separated instances


def score_rows(results: dict[str, Any]) -> dict[str, dict[str, Counts]]:
    """The table's rows of ``results`` (without the threshold sweep)."""
    return {label: cells for label, cells in results.items() if label not in (SWEEP, OBJECTS, INSTANCES)}


def table(results: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    """IoU % / accuracy % per area, pooled over the held-out areas, and the worst area's
    IoU, one row a model (and resolution)."""
    rows = score_rows(results)
    areas = [a for a in next(iter(rows.values())) if a != "overall"]
    head = ["model", *areas, "Overall (held-out areas pooled)", "worst area"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, cells in rows.items():
        shown = (labels or {}).get(label, label)
        present = [a for a in areas if a in cells]
        worst = min(present, key=lambda a: cells[a].iou) if present else None
        row = [f"{100 * cells[a].iou:.2f} / {100 * cells[a].accuracy:.2f}" if a in cells else "-" for a in [*areas, "overall"]]
        lines.append("| " + " | ".join([shown, *row, f"{worst} {100 * cells[worst].iou:.2f}" if worst else "-"]) + " |")
    return "\n".join(lines)


def as_json(results: dict[str, Any]) -> str:
    out: dict[str, Any] = {label: {a: c.as_dict() for a, c in cells.items()} for label, cells in score_rows(results).items()}
    if SWEEP in results:
        out[SWEEP] = {area: {f"{t:.2f}": c.as_dict() for t, c in by_t.items()} for area, by_t in results[SWEEP].items()}
    for key in (OBJECTS, INSTANCES):
        if key in results:
            out[key] = {area: o.as_dict() for area, o in results[key].items()}
    return json.dumps(out, indent=2) + "\n"


def read_json(path: Path) -> dict[str, Any]:
    """A ``footprints loao --json`` file back as counts (the inverse of :func:`as_json`)."""
    raw = json.loads(path.read_text())
    counts = Counts.from_dict
    out: dict[str, Any] = {
        label: {a: counts(c) for a, c in cells.items()}
        for label, cells in raw.items()
        if label not in (SWEEP, OBJECTS, INSTANCES)
    }
    for key in (OBJECTS, INSTANCES):
        if key in raw:
            out[key] = {
                area: ObjectCounts(o["objects_matched"], o["objects_predicted"], o["objects_reference"])
                for area, o in raw[key].items()
            }
    if SWEEP in raw:
        out[SWEEP] = {area: {float(t): counts(c) for t, c in by_t.items()} for area, by_t in raw[SWEEP].items()}
    return out


def threshold_chart(results: dict[str, Any], path: Path) -> Path:
    """IoU against the decision threshold, one curve per held-out area (and resolution),
    and the pooled curve of the 0.3 m areas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep: dict[str, dict[float, Counts]] = results[SWEEP]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for area, by_t in sweep.items():
        ax.plot(list(by_t), [100 * c.iou for c in by_t.values()], lw=1, alpha=0.6, ls="--" if " at " in area else "-", label=area)
    base = [a for a in sweep if " at " not in a]
    ax.plot(THRESHOLDS, [100 * pooled([sweep[a][t] for a in base]).iou for t in THRESHOLDS], "k", lw=2.5, label="pooled (0.3 m)")
    ax.axvline(choose_threshold(sweep, base), color="k", ls=":", lw=1)
    ax.set(xlabel="decision threshold", ylabel="IoU %", title="Held-out IoU against the threshold")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
