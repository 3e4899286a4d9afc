"""Resolution-aware tiling: a raster is brought to the ground resolution its model was
trained at, segmented there, and its rows are brought back to the raster's own grid.

The factor is ``raster metres per pixel / model metres per pixel``: 0.15 m imagery for a
0.3 m model is halved before the model sees it (0.5), 0.6 m imagery doubled (2.0). Within
2 % of 1 nothing is resampled, so exact stitching stays exact. Probability rows coming
back are interpolated per axis as they become final: bilinearly where the model grid is
coarser than the raster's, by the area each raster pixel covers where it is finer, so no
model pixel is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.errors import InputError
from service.rasters import ground_resolution

# What a model served at 0.3 m can be asked to see: finer imagery is downsampled (down to
# about 6x), coarser is upsampled (up to 4x); beyond, what is left of a house is a blur.
FINEST_M, COARSEST_M = 0.05, 1.2
TOLERANCE = 0.02  # within 2 % of the model's resolution: served as it is


@dataclass(frozen=True)
class Resolution:
    """A raster's ground resolution (metres per pixel along x and y) against its model's,
    and the factors between them."""

    raster_m: tuple[float, float]
    model_m: float

    def __post_init__(self) -> None:
        for r in self.raster_m:
            if not np.isfinite(r) or r <= 0:
                raise InputError(f"ground resolution {r} m per pixel is not a positive number")
            if not FINEST_M <= r <= COARSEST_M:
                raise InputError(
                    f"imagery of {r:.3g} m per pixel is outside what this model serves ({FINEST_M}-{COARSEST_M} m; "
                    f"it was trained at {self.model_m} m): resample it first, or state its resolution with --gsd "
                    "if the georeference is wrong"
                )

    @property
    def factors(self) -> tuple[float, float]:
        """Model pixels per raster pixel along x and y (both 1.0 within the tolerance)."""
        fx, fy = (r / self.model_m for r in self.raster_m)
        if abs(fx - 1.0) <= TOLERANCE and abs(fy - 1.0) <= TOLERANCE:
            return 1.0, 1.0
        return fx, fy

    def model_shape(self, height: int, width: int) -> tuple[int, int]:
        fx, fy = self.factors
        if (fx, fy) == (1.0, 1.0):
            return height, width
        return max(1, round(height * fy)), max(1, round(width * fx))


def raster_resolution(crs, transform, width: int, height: int, gsd_m: float | None = None) -> tuple[float, float] | None:
    """A raster's metres per pixel along x and y: ``gsd_m`` where stated (``--gsd``, the
    request's ``gsd_m``), else from its georeference; None where neither says (served as
    it is)."""
    if gsd_m is not None:
        if not np.isfinite(gsd_m) or gsd_m <= 0:
            raise InputError(f"gsd {gsd_m} m per pixel is not a positive number")
        return float(gsd_m), float(gsd_m)
    return ground_resolution(crs, transform, width, height)


class AxisMap:
    """How the indices of a target grid along one axis take their values from a source
    grid's: the area each target pixel covers where the source is finer, bilinearly where
    it is coarser (pixel centres aligned, edges clamped)."""

    def __init__(self, target_len: int, source_len: int) -> None:
        self.target_len, self.source_len = target_len, source_len
        k = source_len / target_len  # source pixels per target pixel
        self.area = k > 1.0
        y = np.arange(target_len, dtype=np.float64)
        if self.area:  # each target pixel averages the source pixels it covers
            self.lo, self.hi = y * k, np.minimum((y + 1) * k, source_len)
            self.first = np.floor(self.lo).astype(np.int64)
            self.last = np.minimum(np.ceil(self.hi).astype(np.int64), source_len) - 1
        else:  # each target pixel interpolates between the two source pixels around its centre
            s = np.clip((y + 0.5) * k - 0.5, 0, source_len - 1)
            self.first = np.floor(s).astype(np.int64)
            self.last = np.minimum(self.first + 1, source_len - 1)
            self.weight = (s - self.first).astype(np.float32)

    def apply(self, block: np.ndarray, offset: int, start: int, stop: int, axis: int) -> np.ndarray:
        """Target indices ``start:stop`` along ``axis`` from ``block``, whose index 0 is source
        index ``offset`` (it must hold every source index they need)."""
        x = np.moveaxis(block, axis, 0).astype(np.float32, copy=False)
        if not self.area:
            w = self.weight[start:stop].reshape(-1, *[1] * (x.ndim - 1))
            a, b = x[self.first[start:stop] - offset], x[self.last[start:stop] - offset]
            return np.moveaxis(a * (1 - w) + b * w, 0, axis)
        # Integral of the piecewise-constant signal: C(t) = S[floor t] + frac(t) x[floor t].
        cum = np.concatenate([np.zeros((1, *x.shape[1:]), np.float64), np.cumsum(x, axis=0, dtype=np.float64)])

        def integral(t: np.ndarray) -> np.ndarray:
            i = np.minimum(np.floor(t).astype(np.int64), offset + len(x) - 1)
            frac = (t - i).reshape(-1, *[1] * (x.ndim - 1))
            return cum[i - offset] + frac * x[i - offset]

        lo, hi = self.lo[start:stop], self.hi[start:stop]
        out = (integral(hi) - integral(lo)) / (hi - lo).reshape(-1, *[1] * (x.ndim - 1))
        return np.moveaxis(out.astype(np.float32), 0, axis)


def resample_image(rgb: np.ndarray, shape: tuple[int, int], method: str = "bilinear") -> np.ndarray:
    """``(C, H, W)`` uint8 imagery on another grid of the same extent: what the model sees.
    Pillow's bilinear filter, which widens its support when it shrinks (no aliasing);
    every path (GeoTIFF, raw rows, any engine) resamples through here, so all give one mask.
    ``method`` names another Pillow filter, for benchmarks/resampling.py to compare."""
    from PIL import Image

    h, w = shape
    f = Image.Resampling[method.upper()]
    return np.stack([np.asarray(Image.fromarray(band).resize((w, h), f)) for band in rgb])


class BackToRaster:
    """Rows of the model grid in (as they become final), rows of the raster's grid out."""

    def __init__(self, raster_shape: tuple[int, int], model_shape: tuple[int, int]) -> None:
        self.rows, self.cols = AxisMap(raster_shape[0], model_shape[0]), AxisMap(raster_shape[1], model_shape[1])
        self.model = np.zeros((0, model_shape[1]), np.float32)  # model rows still needed
        self.model_start = 0  # model index of self.model[0]
        self.model_done = 0  # model rows received
        self.emitted = 0  # raster rows given out

    def feed(self, m0: int, prob: np.ndarray) -> tuple[int, np.ndarray] | None:
        """Take model rows ``m0 ..``; return the raster rows that are now final, if any."""
        assert m0 == self.model_done, "model rows arrive top to bottom"
        self.model = np.concatenate([self.model, prob.astype(np.float32, copy=False)])
        self.model_done = m0 + len(prob)
        complete = self.model_done >= self.rows.source_len
        last = self.rows.last
        stop = self.emitted
        while stop < self.rows.target_len and (complete or last[stop] < self.model_done):
            stop += 1
        if stop == self.emitted:
            return None
        start, self.emitted = self.emitted, stop
        rows = self.rows.apply(self.model, self.model_start, start, stop, axis=0)
        out = self.cols.apply(rows, 0, 0, self.cols.target_len, axis=1)
        if stop < self.rows.target_len:  # drop the model rows no raster row needs any more
            keep = int(self.rows.first[stop]) - self.model_start
            self.model, self.model_start = self.model[keep:], self.model_start + keep
        return start, out
