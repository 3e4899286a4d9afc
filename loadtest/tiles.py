"""The tiles a load test sends: GeoTIFFs from a folder, or synthetic ones it writes.

Each is held in memory as the bytes the client streams, so reading files never
paces the load."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from service.errors import InputError
from service.rasters import geotiff_profile


@dataclass(frozen=True)
class Tile:
    name: str
    data: bytes  # the GeoTIFF file
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def load_folder(folder: Path, limit: int | None = None) -> list[Tile]:
    """Every ``*.tif`` in ``folder`` (sorted), up to ``limit``."""
    paths = sorted(folder.glob("*.tif"))[:limit]
    if not paths:
        raise InputError(f"no .tif files in {folder}")
    return load(paths)


def load(paths: list[Path]) -> list[Tile]:
    tiles = []
    for p in paths:
        with rasterio.open(p) as src:
            tiles.append(Tile(p.name, p.read_bytes(), src.width, src.height))
    return tiles


def synthetic(folder: Path, count: int, size: int, seed: int = 0) -> list[Tile]:
    """``count`` ``size`` x ``size`` RGB tiles of roofs on textured ground, written to
    ``folder`` as deflated GeoTIFFs (UTM, 0.3 m) and loaded back.

    The models run every pixel the same way whatever it shows, so a plausible picture
    is enough for timing; what it shows only moves the mask, not the cost."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"synthetic-{size}-{seed}-{i}.tif" for i in range(count)]
    for i, path in enumerate(paths):
        if path.exists():  # made by an earlier run: the same seed, the same picture
            continue
        rng = np.random.default_rng([seed, i])
        ground = rng.normal(0, 12, (3, size // 8 + 1, size // 8 + 1)).repeat(8, 1).repeat(8, 2)[:, :size, :size]
        rgb = np.clip(ground + np.array([96, 110, 84])[:, None, None], 0, 255).astype(np.uint8)
        for _ in range(size * size // 40_000):
            r, c = rng.integers(0, size - 40, 2)
            h, w = rng.integers(8, 40, 2)
            rgb[:, r : r + h, c : c + w] = rng.integers(120, 230, (3, 1, 1), dtype=np.uint8)
        profile = geotiff_profile(
            count=3,
            width=size,
            height=size,
            crs="EPSG:32618",
            transform=from_origin(500_000 + i * size * 0.3, 4_500_000, 0.3, 0.3),
        )
        partial = path.with_suffix(f".{os.getpid()}.part")  # renamed when whole: a concurrent run never reads half a file
        with rasterio.open(partial, "w", **profile) as dst:
            dst.write(rgb)
        partial.rename(path)
    return load(paths)
