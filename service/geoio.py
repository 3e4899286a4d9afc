"""The GeoTIFF seam: windowed reads with mirror padding, and CRS-keeping writes.

Everything else in footprints passes arrays and window offsets around; only this
module (and the data readers that call it) opens rasters with rasterio, so
georeferencing and padding rules live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

# Tiled, compressed GeoTIFFs: 256-px blocks keep windowed reads cheap, deflate with
# the horizontal predictor is readable by every GDAL build (zstd is not).
_GTIFF_OPTIONS: dict[str, Any] = {
    "driver": "GTiff",
    "tiled": True,
    "blockxsize": 256,
    "blockysize": 256,
    "compress": "deflate",
    "predictor": 2,
    "num_threads": "ALL_CPUS",
    "BIGTIFF": "IF_SAFER",
}


@dataclass(frozen=True)
class RasterInfo:
    """What a reader needs to know about a raster before reading pixels."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)


def raster_info(path: str | Path) -> RasterInfo:
    """Read the header of a raster (no pixels)."""
    with rasterio.open(path) as src:
        return RasterInfo(
            path=Path(path),
            width=src.width,
            height=src.height,
            count=src.count,
            dtype=src.dtypes[0],
            crs=src.crs,
            transform=src.transform,
        )


def mirror_indices(start: int, length: int, size: int) -> np.ndarray:
    """Source indices for positions ``start .. start+length-1`` of an axis of ``size``.

    Positions outside ``[0, size)`` are reflected symmetrically, repeating the edge
    pixel (numpy's ``"symmetric"`` mode: ``... 1 0 | 0 1 2 ... n-1 | n-1 n-2 ...``),
    which is the padding the AMLL method applies to every tile. The reflection is
    periodic, so any amount of padding is defined, even more than ``size``.
    """
    if size <= 0:
        raise ValueError(f"axis size must be positive, got {size}")
    idx = np.arange(start, start + length) % (2 * size)
    return np.where(idx >= size, 2 * size - 1 - idx, idx)


def read_window(
    src: rasterio.io.DatasetReader,
    row: int,
    col: int,
    height: int,
    width: int,
    bands: list[int] | None = None,
) -> np.ndarray:
    """Read ``(bands, height, width)`` pixels whose top-left corner is ``(row, col)``.

    The window may run off the raster on any side (negative offsets included):
    outside pixels are mirror padded with :func:`mirror_indices`. Only the
    in-bounds rectangle the window needs is read from disk.
    """
    rows = mirror_indices(row, height, src.height)
    cols = mirror_indices(col, width, src.width)
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    block = src.read(bands, window=Window(c0, r0, c1 - c0, r1 - r0))
    inside = row >= 0 and col >= 0 and row + height <= src.height and col + width <= src.width
    if inside:
        return block
    return block[:, (rows - r0)[:, None], (cols - c0)[None, :]]


def geotiff_profile(
    *,
    width: int,
    height: int,
    count: int,
    crs: CRS | str | None,
    transform: Affine,
    dtype: str = "uint8",
    nodata: float | None = None,
    photometric: str | None = None,
) -> dict[str, Any]:
    """Creation profile for a tiled, compressed GeoTIFF on the given grid."""
    profile = dict(_GTIFF_OPTIONS)
    profile.update(
        width=width,
        height=height,
        count=count,
        dtype=dtype,
        crs=CRS.from_user_input(crs) if crs is not None else None,
        transform=transform,
    )
    if nodata is not None:
        profile["nodata"] = nodata
    if photometric is not None:
        profile["photometric"] = photometric
    return profile


def write_geotiff(
    path: str | Path,
    array: np.ndarray,
    *,
    crs: CRS | str | None,
    transform: Affine,
    nodata: float | None = None,
) -> None:
    """Write a ``(bands, h, w)`` or ``(h, w)`` array as a tiled, compressed GeoTIFF."""
    if array.ndim == 2:
        array = array[None]
    count, height, width = array.shape
    profile = geotiff_profile(
        width=width,
        height=height,
        count=count,
        crs=crs,
        transform=transform,
        dtype=str(array.dtype),
        nodata=nodata,
        photometric="RGB" if count == 3 and array.dtype == np.uint8 else None,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def row_strips(height: int, strip: int) -> list[tuple[int, int]]:
    """``(row_start, row_stop)`` pairs that cut ``height`` rows into strips."""
    return [(r, min(r + strip, height)) for r in range(0, height, strip)]


def read_decimated(path: str | Path, max_side: int, bands: list[int] | None = None) -> np.ndarray:
    """The whole raster shrunk (nearest pixel) so its longer side is at most ``max_side``.

    GDAL decimates while reading, so a 5000^2 tile never sits in memory at full size.
    """
    with rasterio.open(path) as src:
        scale = min(1.0, max_side / max(src.height, src.width))
        shape = (max(1, round(src.height * scale)), max(1, round(src.width * scale)))
        bands = bands or list(range(1, src.count + 1))
        return src.read(bands, out_shape=(len(bands), *shape))
