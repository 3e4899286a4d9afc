"""Overlay PNGs for people: the image with predicted (and reference) buildings on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from service.rasters import read_decimated

# Against a reference: hits green, false alarms red, misses blue.
# Without one: predicted buildings yellow.
_HIT, _FALSE, _MISS, _PRED = (40, 220, 60), (235, 40, 40), (50, 110, 255), (255, 215, 0)
_ALPHA = 0.45


def overlay_array(rgb: np.ndarray, pred: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """Blend masks onto an ``(h, w, 3)`` uint8 image; returns ``(h, w, 3)`` uint8."""
    out = rgb.astype(np.float32)
    pred = pred > 0
    layers = (
        [(pred, _PRED)] if ref is None else [(pred & (ref > 0), _HIT), (pred & ~(ref > 0), _FALSE), (~pred & (ref > 0), _MISS)]
    )
    for where, colour in layers:
        out[where] = (1 - _ALPHA) * out[where] + _ALPHA * np.asarray(colour, np.float32)
    return out.round().astype(np.uint8)


def write_overlay(
    image: str | Path,
    pred: str | Path,
    out_png: str | Path,
    ref: str | Path | None = None,
    max_side: int = 1500,
) -> Path:
    """Write an overlay PNG of GeoTIFFs ``image`` and ``pred`` (and ``ref``), shrunk to ``max_side``."""
    rgb = read_decimated(image, max_side, bands=[1, 2, 3]).transpose(1, 2, 0)
    p = read_decimated(pred, max_side, bands=[1])[0]
    r = read_decimated(ref, max_side, bands=[1])[0] if ref is not None else None
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_array(rgb, p, r)).save(out_png, optimize=True)
    return out_png
