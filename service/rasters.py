"""The GeoTIFF seam: windowed reads with mirror padding, and CRS-keeping writes.

Everything else in footprints passes arrays and window offsets around; only this
module (and the data readers that call it) opens rasters with rasterio, so
georeferencing and padding rules live in one place.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.transform import Affine
from rasterio.windows import Window

from service.errors import InputError

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


# Metres per degree of latitude, and of longitude at the equator (WGS 84, near enough
# for choosing a resampling factor).
M_PER_DEGREE_LAT, M_PER_DEGREE_LON = 110_574.0, 111_320.0


def decode_options() -> dict[str, str]:
    """Open options of an input raster: the blocks of one read are decoded on every core
    this process may use (GTiff's ``NUM_THREADS``; ``GDAL_NUM_THREADS`` in the
    environment sets another count, 1 turns it off). A window spans ~30 DEFLATE blocks."""
    from service.machine import available_cores

    return {"NUM_THREADS": os.environ.get("GDAL_NUM_THREADS") or str(available_cores())}


def ground_resolution(crs: CRS | None, transform: Affine, width: int, height: int) -> tuple[float, float] | None:
    """Metres on the ground per pixel along x and y at the raster's centre, from its
    georeference; None where it has none. Projected CRSs in metres (or feet) give it
    directly; Web Mercator's nominal metres shrink with latitude (ground = nominal x
    cos(latitude)); geographic CRSs' degrees are turned into metres through the latitude."""
    if crs is None:
        return None
    dx, dy = float(np.hypot(transform.a, transform.d)), float(np.hypot(transform.b, transform.e))
    cx, cy = transform @ (width / 2, height / 2)
    if crs.is_geographic:
        lat = float(np.clip(cy, -89.9, 89.9))
        return dx * M_PER_DEGREE_LON * float(np.cos(np.radians(lat))), dy * M_PER_DEGREE_LAT
    if crs.to_epsg() == 3857:
        from rasterio.warp import transform as warp_points

        _, (lat,) = warp_points(crs, "EPSG:4326", [cx], [cy])
        k = float(np.cos(np.radians(lat)))
        return dx * k, dy * k
    try:
        _, to_metres = crs.linear_units_factor
    except Exception:  # a CRS without linear units: nothing to say
        return None
    return dx * float(to_metres), dy * float(to_metres)


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
    pads = ((0, 0), (max(0, -row), max(0, row + height - src.height)), (max(0, -col), max(0, col + width - src.width)))
    if (r0, r1, c0, c1) == (max(row, 0), min(row + height, src.height), max(col, 0), min(col + width, src.width)):
        # The window overlaps the raster: numpy's symmetric padding is the same mirror,
        # 5-10x faster than gathering through index arrays (most windows touch an edge).
        return np.pad(block, pads, mode="symmetric")
    return block[:, (rows - r0)[:, None], (cols - c0)[None, :]]


def to_cog(src: str | Path, dst: str | Path, resampling: str = "NEAREST") -> None:
    """Copy a GeoTIFF as a Cloud-Optimized GeoTIFF (GDAL's COG driver: 256-px tiles,
    DEFLATE, overviews made with ``resampling``, the internal mask carried), so that a
    reader fetches only the tiles and the zoom level it shows."""
    from rasterio.shutil import copy

    copy(str(src), str(dst), driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=256, OVERVIEW_RESAMPLING=resampling)


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


class RGBRaster:
    """An RGB (or RGBA) uint8 raster opened for tiling, validated on open.

    Valid input is 3 bands, or 4 whose fourth is alpha; anything else is refused
    with an :class:`~service.errors.InputError` that says what was found. Pixels
    the GeoTIFF marks invalid (its nodata value, alpha 0, or an internal mask)
    are reported by :meth:`valid_rows`.
    """

    def __init__(self, path: str | Path, dataset: rasterio.io.DatasetReader | None = None) -> None:
        from service.urls import is_url, remote_reads

        remote = is_url(path)
        self.path: str | Path = str(path) if remote else Path(path)
        if remote:
            remote_reads()
        try:
            self.src = dataset if dataset is not None else rasterio.open(self.path, **decode_options())
        except rasterio.errors.RasterioIOError as e:
            raise InputError(f"{self.path}: cannot be read as a raster ({e})") from None
        try:
            self._validate()
        except InputError:
            self.src.close()
            raise
        self.height, self.width = self.src.height, self.src.width
        self.crs, self.transform = self.src.crs, self.src.transform
        # GDAL's per-dataset mask flags: ALL_VALID means no nodata anywhere.
        flags = self.src.mask_flag_enums[0]
        self.has_mask = not (len(flags) == 1 and flags[0] == MaskFlags.all_valid)
        # The tiler reads the next windows in a thread while it masks finished rows:
        # one GDAL dataset handle must not serve both at once.
        self._lock = threading.Lock()

    def _validate(self) -> None:
        src, where = self.src, self.path
        if src.count not in (3, 4):
            raise InputError(
                f"{where}: raster has {src.count} band(s); expected RGB (3 bands) or RGBA (4 bands, the fourth alpha)"
            )
        if src.count == 4 and src.colorinterp[3] != ColorInterp.alpha:
            raise InputError(f"{where}: band 4 is {src.colorinterp[3].name}, not alpha; a 4-band raster must be RGBA")
        if any(dt != "uint8" for dt in src.dtypes[:3]):
            raise InputError(f"{where}: raster is {src.dtypes[0]}; expected uint8 RGB (0-255)")
        if src.width == 0 or src.height == 0:
            raise InputError(f"{where}: raster is empty ({src.width}x{src.height})")

    def read(self, row: int, col: int, size: int) -> np.ndarray:
        """``(3, size, size)`` uint8 RGB at ``(row, col)``, mirror padded off the raster."""
        with self._lock, self._decoding(row, size):
            return read_window(self.src, row, col, size, size, bands=[1, 2, 3])

    def read_full(self) -> np.ndarray:
        """The whole ``(3, h, w)`` uint8 RGB raster (to resample it as a whole)."""
        with self._lock, self._decoding(0, self.height):
            return self.src.read([1, 2, 3])

    def valid_rows(self, r0: int, r1: int) -> np.ndarray | None:
        """Boolean validity of rows ``r0:r1`` (None when every pixel is valid)."""
        if not self.has_mask:
            return None
        with self._lock, self._decoding(r0, r1 - r0):
            return self.src.dataset_mask(window=Window(0, r0, self.width, r1 - r0)) > 0

    @contextlib.contextmanager
    def _decoding(self, row: int, rows: int) -> Iterator[None]:
        """GDAL opens a GeoTIFF from its header and decodes blocks only when read: a file
        damaged or cut short past its header fails here, which is the input's fault."""
        try:
            yield
        except rasterio.errors.RasterioError as e:
            first = max(0, row)
            raise InputError(
                f"{self.path}: pixels of rows {first}-{min(self.height, row + rows) - 1} cannot be decoded "
                f"({' '.join(str(e).split())}); the GeoTIFF is damaged or truncated"
            ) from None

    def close(self) -> None:
        self.src.close()

    def __enter__(self) -> RGBRaster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
