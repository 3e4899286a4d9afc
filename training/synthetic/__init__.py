"""Synthetic Inria-like cities: ``footprints synth``.

Writes ``OUT/{train,test}/{images,gt}/<city><n>.tif`` with 3-band uint8 images and
0/255 masks, 0.3 m pixels in each city's UTM zone, tiles of a city laid side by
side on a grid. Deterministic: the same seed, city and tile index give the same
bytes, whatever else is generated in the same run.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.transform import Affine, from_origin
from tqdm import tqdm

from service.errors import InputError

from .render import write_tile
from .scene import PIXEL_M, make_scene
from .styles import CITY_STYLES, CityStyle, style

__all__ = ["CITY_STYLES", "TileReport", "style", "synthesize", "synthesize_tile", "tile_transform"]


@dataclass(frozen=True)
class TileReport:
    city: str
    index: int
    split: str
    image: Path
    gt: Path
    buildings: int
    building_share: float


def tile_transform(st: CityStyle, index: int, size: int, tiles_per_city: int) -> Affine:
    """Georeference of tile ``index`` (1-based): a city's tiles sit side by side, row-major."""
    cols = math.ceil(math.sqrt(tiles_per_city))
    r, c = divmod(index - 1, cols)
    extent = size * PIXEL_M
    east, north = st.origin_m
    return from_origin(east + c * extent, north - r * extent, PIXEL_M, PIXEL_M)


def _seed_sequence(seed: int, city: str, index: int) -> np.random.SeedSequence:
    # crc32, not hash(): Python's str hash changes between processes.
    return np.random.SeedSequence([seed, zlib.crc32(city.encode()), index])


def synthesize_tile(out: Path, st: CityStyle, index: int, size: int, tiles_per_city: int, seed: int) -> TileReport:
    """Generate and write one image/mask pair."""
    scene_seq, render_seq = _seed_sequence(seed, st.name, index).spawn(2)
    scene = make_scene(st, np.random.default_rng(scene_seq), size, size)
    name = f"{st.name}{index}.tif"
    image, gt = out / st.split / "images" / name, out / st.split / "gt" / name
    share = write_tile(scene, st, image, gt, tile_transform(st, index, size, tiles_per_city), render_seq)
    return TileReport(st.name, index, st.split, image, gt, scene.n_buildings, share)


def synthesize(
    out: str | Path,
    size: int = 5000,
    tiles_per_city: int = 1,
    seed: int = 0,
    cities: Sequence[str] | None = None,
    progress: bool = True,
) -> list[TileReport]:
    """Write ``tiles_per_city`` tiles of each city (all ten by default) under ``out``."""
    if size < 64:
        raise InputError(f"tile size must be at least 64 px, got {size}")
    if tiles_per_city < 1:
        raise InputError(f"tiles per city must be at least 1, got {tiles_per_city}")
    styles = [style(c) for c in cities] if cities else list(CITY_STYLES)
    jobs = [(st, i) for st in styles for i in range(1, tiles_per_city + 1)]
    reports = []
    for st, i in tqdm(jobs, desc="synth", unit="tile", disable=not progress):
        reports.append(synthesize_tile(Path(out), st, i, size, tiles_per_city, seed))
    return reports
