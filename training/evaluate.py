"""``footprints evaluate``: the benchmark's scoring of a folder of predicted masks.

Predictions and references are flat folders of ``<city><n>.tif`` masks (0/255 or
0/1). Every tile is read in row strips, so memory does not grow with tile size;
IoU and accuracy are pooled per city and overall (see :mod:`training.metric`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from tqdm import tqdm

from service.errors import InputError
from service.rasters import row_strips

from .data.inria import LayoutError, parse_tile_name, tile_files
from .metric import Counts, pooled
from .objects import BoundaryCounts, ObjectCounts, boundary_counts, object_counts

STRIP_ROWS = 512
_BINARY_CODINGS = ({0, 1}, {0, 255})


class EvaluationError(InputError):
    """Input that cannot be scored; the message names the file."""


def _check_binary(path: Path, histogram: np.ndarray) -> None:
    values = set(np.flatnonzero(histogram).tolist())
    if not any(values <= coding for coding in _BINARY_CODINGS):
        shown = sorted(values)[:8]
        raise EvaluationError(
            f"{path}: not a binary mask; found values {shown}{'...' if len(values) > 8 else ''}, expected 0/255 or 0/1"
        )


def tile_counts(pred_path: Path, gt_path: Path) -> Counts:
    """Confusion counts of one predicted mask against its reference, strip by strip."""
    with rasterio.open(pred_path) as pred, rasterio.open(gt_path) as gt:
        if (pred.height, pred.width) != (gt.height, gt.width):
            raise EvaluationError(
                f"{pred_path}: prediction is {pred.width}x{pred.height} but reference {gt_path} is {gt.width}x{gt.height}"
            )
        for src, path in ((pred, pred_path), (gt, gt_path)):
            if src.count != 1 or src.dtypes[0] not in ("uint8", "int8", "uint16", "int16", "int32", "uint32"):
                raise EvaluationError(f"{path}: expected a 1-band integer mask, got {src.count} band(s) of {src.dtypes[0]}")
        total = Counts()
        hist_pred = np.zeros(256, np.int64)
        hist_gt = np.zeros(256, np.int64)
        for r0, r1 in row_strips(gt.height, STRIP_ROWS):
            win = Window(0, r0, gt.width, r1 - r0)
            p, g = pred.read(1, window=win), gt.read(1, window=win)
            for arr, hist, path in ((p, hist_pred, pred_path), (g, hist_gt, gt_path)):
                if arr.min() < 0 or arr.max() > 255:
                    raise EvaluationError(f"{path}: not a binary mask; values reach {arr.min()}..{arr.max()}")
                hist += np.bincount(arr.ravel().astype(np.uint8), minlength=256)
            total = total + Counts.from_masks(p, g)
    _check_binary(pred_path, hist_pred)
    _check_binary(gt_path, hist_gt)
    return total


def _tiles_in(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: {role} folder does not exist")
    try:
        tiles = tile_files(folder)
    except LayoutError as e:
        raise EvaluationError(f"{role}: {e}") from None
    if not tiles:
        raise EvaluationError(f"{folder}: no {role} tiles")
    return tiles


@dataclass
class Report:
    """Counts per tile, pooled per city and overall."""

    tiles: dict[str, Counts] = field(default_factory=dict)
    objects: dict[str, ObjectCounts] = field(default_factory=dict)  # buildings matched per tile
    boundaries: dict[str, BoundaryCounts] = field(default_factory=dict)  # outline bands per tile

    @property
    def cities(self) -> dict[str, Counts]:
        by_city: dict[str, list[Counts]] = {}
        for name, c in self.tiles.items():
            by_city.setdefault(parse_tile_name(name)[0], []).append(c)
        return {city: pooled(cs) for city, cs in sorted(by_city.items())}

    @property
    def overall(self) -> Counts:
        return pooled(list(self.tiles.values()))

    @property
    def city_objects(self) -> dict[str, ObjectCounts]:
        by_city: dict[str, ObjectCounts] = {}
        for name, c in sorted(self.objects.items()):
            city = parse_tile_name(name)[0]
            by_city[city] = by_city.get(city, ObjectCounts()) + c
        return by_city

    @property
    def overall_objects(self) -> ObjectCounts:
        return sum(self.objects.values(), ObjectCounts())

    def as_dict(self) -> dict:
        def both(c: Counts, o: ObjectCounts | None, b: BoundaryCounts | None) -> dict:
            out = {**c.as_dict(), **(o.as_dict() if o is not None else {})}
            if b is not None:
                out["boundary_iou"] = None if np.isnan(b.iou) else b.iou
            return out

        def by_city(per_tile: dict) -> dict:
            out: dict = {}
            for name, c in sorted(per_tile.items()):
                city = parse_tile_name(name)[0]
                out[city] = out[city] + c if city in out else c
            return out

        objects, bounds = self.city_objects, by_city(self.boundaries)
        overall_bounds = sum(self.boundaries.values(), BoundaryCounts()) if self.boundaries else None
        return {
            "overall": both(self.overall, self.overall_objects if self.objects else None, overall_bounds),
            "cities": {k: both(v, objects.get(k), bounds.get(k)) for k, v in self.cities.items()},
            "tiles": {k: both(v, self.objects.get(k), self.boundaries.get(k)) for k, v in sorted(self.tiles.items())},
        }

    def table(self, label: str) -> str:
        """A Markdown table shaped like the paper's Table 2: IoU % / accuracy % per city."""

        def cell(c: Counts) -> str:
            iou = "n/a" if np.isnan(c.iou) else f"{100 * c.iou:.2f}"
            return f"{iou} / {100 * c.accuracy:.2f}"

        cities = self.cities
        head = ["method", *cities, "Overall"]
        row = [label, *(cell(c) for c in cities.values()), cell(self.overall)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(row) + " |"]
        if self.objects:
            f1 = [*(o.f1 for o in self.city_objects.values()), self.overall_objects.f1]
            lines.append("| object F1 | " + " | ".join("n/a" if np.isnan(x) else f"{100 * x:.2f}" for x in f1) + " |")
        return (
            "\n".join(lines)
            + "\n(IoU % / accuracy %, pooled over tiles; object F1 %: buildings matched one-to-one at IoU >= 0.5)"
        )


def evaluate_dirs(pred_dir: str | Path, gt_dir: str | Path, progress: bool = True) -> Report:
    """Score every reference tile in ``gt_dir`` against the same-named file in ``pred_dir``."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    gts = _tiles_in(gt_dir, "reference")
    preds = _tiles_in(pred_dir, "prediction")
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise EvaluationError(f"{pred_dir / missing[0]}: prediction missing for reference tile {gt_dir / missing[0]}")
    extra = sorted(set(preds) - set(gts))
    if extra:
        raise EvaluationError(f"{pred_dir / extra[0]}: prediction has no reference tile in {gt_dir}")
    return evaluate_pairs({name: (preds[name], gts[name]) for name in gts}, progress)


def evaluate_pairs(pairs: dict[str, tuple[Path, Path]], progress: bool = True) -> Report:
    """Score named ``(prediction, reference)`` mask pairs (names are ``<city><n>.tif``)."""
    report = Report()
    for name in tqdm(sorted(pairs), desc="evaluate", unit="tile", disable=not progress):
        report.tiles[name] = tile_counts(*pairs[name])
        report.objects[name], report.boundaries[name] = tile_objects(*pairs[name])
    return report


def tile_objects(pred_path: Path, gt_path: Path) -> tuple[ObjectCounts, BoundaryCounts]:
    """Buildings of one predicted mask matched to its reference's, and their outline bands
    (whole tile: a building does not stop at a strip; :func:`tile_counts` has checked
    both masks)."""
    with rasterio.open(pred_path) as pred, rasterio.open(gt_path) as gt:
        p, g = pred.read(1), gt.read(1)
    return object_counts(p, g), boundary_counts(p, g)


def write_json(report: Report, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
