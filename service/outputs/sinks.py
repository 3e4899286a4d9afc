"""Row sinks: where a tile's rows go as they become final (:mod:`service.tiling.pipeline`).

* :class:`GeoTiffRows`: a mask or probability GeoTIFF on the input's grid, written row
  block by row block, the input's nodata carried as its GDAL mask.
* :class:`MaskPlane`: the whole mask in memory, for GeoTIFF bytes and polygons at the end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import Affine
from rasterio.windows import Window

from service.rasters import geotiff_profile, to_cog
from service.tiling.pipeline import RowBlock


class GeoTiffRows:
    """Rows into a Cloud-Optimized GeoTIFF: the mask (0/255), or the probabilities as
    0-255 (``probabilities=True``). Rows go into a tiled GeoTIFF beside it as they come;
    at close it becomes a COG (overviews need the whole raster, and GDAL's COG driver
    only copies)."""

    def __init__(
        self, path: str | Path, width: int, height: int, crs: CRS | str | None, transform: Affine, probabilities: bool = False
    ) -> None:
        self.path, self.probabilities = Path(path), probabilities
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = self.path.with_name(f".{self.path.name}.rows.tif")
        self.dst = rasterio.open(
            self.rows, "w", **geotiff_profile(width=width, height=height, count=1, crs=crs, transform=transform)
        )

    def write(self, block: RowBlock) -> None:
        win = Window(0, block.r0, block.mask.shape[1], block.mask.shape[0])
        self.dst.write((block.probabilities_u8 if self.probabilities else block.mask)[None], window=win)
        if block.valid is not None:
            # The output carries the input's nodata as its own GDAL mask.
            self.dst.write_mask(block.valid.astype(np.uint8) * 255, window=win)

    def close(self) -> None:
        if self.dst.closed:
            return
        self.dst.close()
        # Probabilities average into their overviews; a mask's stay 0/255.
        to_cog(self.rows, self.path, "AVERAGE" if self.probabilities else "NEAREST")
        self.rows.unlink()


class MaskPlane:
    """The whole 0/255 mask, kept for what needs all of it (GeoTIFF bytes, polygons), and
    with ``probabilities`` the 0-255 probabilities too (each building's confidence)."""

    def __init__(self, width: int, height: int, probabilities: bool = False) -> None:
        self.plane = np.zeros((height, width), np.uint8)
        self.probabilities = np.zeros((height, width), np.uint8) if probabilities else None

    def write(self, block: RowBlock) -> None:
        self.plane[block.r0 : block.r1] = block.mask
        if self.probabilities is not None:
            self.probabilities[block.r0 : block.r1] = block.probabilities_u8

    def close(self) -> None:
        pass

    def geotiff_bytes(self, crs: CRS | str | None, transform: Affine) -> bytes:
        """The mask as GeoTIFF bytes (what the service sends back)."""
        return mask_geotiff_bytes(self.plane, crs, transform)


def mask_geotiff_bytes(mask: np.ndarray, crs, transform: Affine) -> bytes:
    """A whole 0/255 mask plane as GeoTIFF bytes."""
    profile = geotiff_profile(width=mask.shape[1], height=mask.shape[0], count=1, crs=crs, transform=transform)
    with MemoryFile() as mem, MemoryFile() as cog:
        with mem.open(**profile) as dst:
            dst.write(mask[None])
        to_cog(mem.name, cog.name)
        return bytes(cog.read())


class ProbabilityPlane:
    """The whole float32 probability plane on the raster's grid (what choosing a threshold,
    or averaging an ensemble's members, needs)."""

    def __init__(self, width: int, height: int) -> None:
        self.plane = np.zeros((height, width), np.float32)

    def write(self, block: RowBlock) -> None:
        assert block.probabilities is not None, "a block without probabilities"
        self.plane[block.r0 : block.r1] = block.probabilities

    def close(self) -> None:
        pass
