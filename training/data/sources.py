"""Training data from several dataset roots: real areas beside synthetic cities.

* **Roots** in the Inria layout (``train/images``...) or the flat layout of the
  real-imagery folders (``images/``, ``gt/``), each with a sampling weight
  (``PATH`` or ``PATH:WEIGHT`` on the command line).
* **Resolution**: every tile is brought to the training resolution (0.3 m, Inria's)
  from its georeference. Projected metric CRSs give the ground size directly; Web
  Mercator's nominal metres shrink with latitude (ground = nominal x cos(latitude),
  0.26 m for real-oam's nepal tiles at 28 N). Tiles off by more than 2 % are
  resampled once (image bilinear, mask nearest) into a cache keyed on the files.
* **Areas**: a tile's area is its city name, with places that lie together merged
  (``same_area``: banepa and real-oam's nepal are one survey, in two roots). Each
  area is drawn with its root's weight, whatever its size (so 19 small chips of one
  area cannot drown a large mosaic of another, nor the reverse), and the tiles
  within an area in proportion to their pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from tqdm import tqdm

from service import rasters
from service.errors import InputError
from service.rasters import write_geotiff

from .inria import InriaDataset, Tile, _cache_dir, _files_key

TRAINING_RESOLUTION_M = 0.3
RESAMPLE_TOLERANCE = 0.02


@dataclass(frozen=True)
class Root:
    path: Path
    weight: float = 1.0


def parse_root(text: str) -> Root:
    """``PATH`` or ``PATH:WEIGHT`` (a weight > 0)."""
    path, sep, weight = text.rpartition(":")
    if sep and path:
        try:
            w = float(weight)
        except ValueError:
            return Root(Path(text))
        if not w > 0:
            raise InputError(f"{text}: a root's sampling weight must be > 0")
        return Root(Path(path), w)
    return Root(Path(text))


def ground_resolution(path: Path) -> float:
    """Metres on the ground per pixel (x), from the raster's georeference, as serving
    reads it (:func:`service.rasters.ground_resolution`)."""
    with rasterio.open(path) as src:
        found = rasters.ground_resolution(src.crs, src.transform, src.width, src.height)
    if found is None:
        raise InputError(f"{path}: no CRS in metres or degrees; the ground resolution cannot be known")
    return found[0]


def _resampled(tile: Tile, scale: float, cache: Path) -> Tile:
    """``tile`` resampled by ``scale`` (new pixels per old) into ``cache``."""
    image, gt = cache / "images" / tile.image.name, cache / "gt" / tile.image.name
    if image.is_file() and (tile.gt is None or gt.is_file()):
        return replace(tile, image=image, gt=gt if tile.gt else None)
    pairs = [(tile.image, image, Resampling.bilinear)] + ([(tile.gt, gt, Resampling.nearest)] if tile.gt else [])
    for src_path, dst_path, method in pairs:
        with rasterio.open(src_path) as src:
            h, w = max(1, round(src.height * scale)), max(1, round(src.width * scale))
            data = src.read(out_shape=(src.count, h, w), resampling=method)
            transform = src.transform @ src.transform.scale(src.width / w, src.height / h)
            dst_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst_path.with_name(f".{dst_path.name}.tmp")
            write_geotiff(tmp, data, crs=src.crs, transform=transform)
            tmp.replace(dst_path)  # a killed run never leaves a half-written tile that looks done
    return replace(tile, image=image, gt=gt if tile.gt else None)


def at_training_resolution(
    tiles: Sequence[Tile], target_m: float = TRAINING_RESOLUTION_M, cache: Path | None = None
) -> list[Tile]:
    """``tiles``, those off the target resolution by more than 2 % resampled to it."""
    out = []
    for t in tqdm(tiles, desc="resolution", unit="tile", leave=False):
        scale = ground_resolution(t.image) / target_m
        if abs(scale - 1) <= RESAMPLE_TOLERANCE:
            out.append(t)
            continue
        key = _files_key([p for p in (t.image, t.gt) if p is not None])
        out.append(_resampled(t, scale, (cache or _cache_dir()) / "resampled" / f"{target_m}m-{key}"))
    return out


def area_of(city: str, same_area: Sequence[Sequence[str]]) -> str:
    """The area a city belongs to: ``"nepal+banepa"`` for a merged group, else the city."""
    for group in same_area:
        if city in group:
            return "+".join(group)
    return city


@dataclass(frozen=True)
class Sources:
    """Training tiles of every root and the probability of drawing each."""

    tiles: list[Tile]
    weights: np.ndarray
    areas: list[str]  # each tile's area

    def describe(self) -> str:
        share: dict[str, float] = {}
        for a, w in zip(self.areas, self.weights):
            share[a] = share.get(a, 0.0) + float(w)
        return ", ".join(f"{a} {100 * s:.1f} %" for a, s in sorted(share.items()))


def load_sources(
    roots: Sequence[Root],
    same_area: Sequence[Sequence[str]] = (),
    holdout: Sequence[str] = (),
    resample_to_m: float | None = TRAINING_RESOLUTION_M,
) -> Sources:
    """The training tiles (``train`` split, or all tiles of a flat root) of ``roots``,
    minus the areas in ``holdout`` (a city name holds out its whole area), at the
    training resolution, with area-balanced sampling weights."""
    held = {area_of(h, same_area) for h in holdout}
    tiles: list[Tile] = []
    pixels: list[int] = []
    areas: list[str] = []
    area_weight: dict[str, float] = {}
    for root in roots:
        data = InriaDataset(root.path)
        split = "train" if any(t.split == "train" for t in data.tiles) else "all"
        kept = [t for t in data.split(split) if area_of(t.city, same_area) not in held]
        if not kept:
            continue
        if resample_to_m:
            kept = at_training_resolution(kept, resample_to_m)
        for t in kept:
            with rasterio.open(t.image) as src:
                pixels.append(src.width * src.height)
            tiles.append(t)
            areas.append(area_of(t.city, same_area))
            area_weight[areas[-1]] = max(area_weight.get(areas[-1], 0.0), root.weight)
    if not tiles:
        raise InputError(f"no training tiles left in {[str(r.path) for r in roots]} after holding out {sorted(held)}")
    area_pixels = {a: sum(p for p, b in zip(pixels, areas) if b == a) for a in area_weight}
    w = np.asarray([area_weight[a] * p / area_pixels[a] for p, a in zip(pixels, areas)], np.float64)
    return Sources(tiles, w / w.sum(), areas)
