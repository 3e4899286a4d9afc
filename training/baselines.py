"""A trivial reference floor: per-pixel colour lookup, no spatial context at all.

It learns P(building | RGB colour) as a 32^3-bin histogram over the training
tiles and labels a pixel building where that probability is above one half. Any
real network must beat it by a wide margin; it is what the demo scores before a
trained model exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from tqdm import tqdm

from service.errors import InputError
from service.rasters import geotiff_profile, row_strips

from .data.inria import Tile

_LEVELS = 32  # bins per channel
_STRIP = 512


def _bins(rgb: np.ndarray) -> np.ndarray:
    q = (rgb >> 3).astype(np.int32)  # 256 / 32 = 8 grey levels per bin
    return (q[0] * _LEVELS + q[1]) * _LEVELS + q[2]


class ColourBaseline:
    """Fit on tiles with ground truth, then label images pixel by pixel."""

    def __init__(self) -> None:
        self.building_lut: np.ndarray | None = None

    def fit(self, tiles: Sequence[Tile], progress: bool = True) -> ColourBaseline:
        building = np.zeros(_LEVELS**3, np.int64)
        total = np.zeros(_LEVELS**3, np.int64)
        for t in tqdm(tiles, desc="fit colour baseline", unit="tile", disable=not progress):
            if t.gt is None:
                raise InputError(f"{t.image}: no ground truth to fit on")
            with rasterio.open(t.image) as img, rasterio.open(t.gt) as gt:
                for r0, r1 in row_strips(img.height, _STRIP):
                    win = Window(0, r0, img.width, r1 - r0)
                    b = _bins(img.read([1, 2, 3], window=win)).ravel()
                    m = gt.read(1, window=win).ravel() > 0
                    total += np.bincount(b, minlength=_LEVELS**3)
                    building += np.bincount(b[m], minlength=_LEVELS**3)
        # Colours never seen in training default to background (the majority class).
        self.building_lut = building * 2 > total
        return self

    def predict_file(self, image: Path, out: Path) -> None:
        """Write a 0/255 mask GeoTIFF on ``image``'s grid."""
        if self.building_lut is None:
            raise RuntimeError("fit the baseline before predicting")
        with rasterio.open(image) as img:
            profile = geotiff_profile(width=img.width, height=img.height, count=1, crs=img.crs, transform=img.transform)
            out.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(out, "w", **profile) as dst:
                for r0, r1 in row_strips(img.height, _STRIP):
                    win = Window(0, r0, img.width, r1 - r0)
                    mask = self.building_lut[_bins(img.read([1, 2, 3], window=win))]
                    dst.write((mask.astype(np.uint8) * 255)[None], window=win)
