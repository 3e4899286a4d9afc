"""Burn a :class:`Scene` into rasters and write the image / mask GeoTIFF pair.

Three label rasters are held for the whole tile (ground class uint8, roof id
uint16, shadow uint8: 4 bytes a pixel, 100 MB at 5000^2); colour, lighting and
sensor noise are rendered and written strip by strip, so the RGB image never
exists in memory at full size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.features import rasterize
from rasterio.transform import Affine

from service.rasters import geotiff_profile, row_strips

from .scene import Ground, Scene
from .styles import CityStyle

STRIP_ROWS = 256  # one row of 256-px GeoTIFF blocks per write
_SHADOW_RGB = np.array([0.45, 0.48, 0.56], np.float32)  # shade is darker and bluer
# Per-pixel sensor/texture noise (grey levels) by ground class; roofs get ROOF_NOISE.
_NOISE = {
    Ground.GRASS: 9,
    Ground.DRY_GRASS: 10,
    Ground.SOIL: 10,
    Ground.ROAD: 5,
    Ground.PARKING: 5,
    Ground.WATER: 3,
    Ground.TREE: 22,
    Ground.CAR_WHITE: 6,
    Ground.CAR_BLACK: 6,
    Ground.CAR_RED: 6,
    Ground.CAR_BLUE: 6,
    Ground.CAR_SILVER: 6,
}
ROOF_NOISE = 8
_CAR_RGB = {
    Ground.CAR_WHITE: (225, 225, 225),
    Ground.CAR_BLACK: (30, 30, 35),
    Ground.CAR_RED: (170, 30, 30),
    Ground.CAR_BLUE: (35, 60, 150),
    Ground.CAR_SILVER: (170, 172, 178),
}


def ground_palette(st: CityStyle) -> np.ndarray:
    """RGB of each :class:`Ground` class for this city, indexable by class id."""
    lut = np.zeros((len(Ground), 3), np.float32)
    for cls in Ground:
        name = cls.name.lower()
        lut[cls] = _CAR_RGB[cls] if cls in _CAR_RGB else getattr(st, name)
    return lut


def burn(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground class, roof id (0 = no building) and shadow rasters of the scene."""
    shape = (scene.height, scene.width)
    ident = Affine.identity()  # geometry is already in pixel coordinates
    ground = rasterize(scene.ground, out_shape=shape, fill=int(Ground.GRASS), transform=ident, dtype="uint8")
    roofs = (
        rasterize(scene.roofs, out_shape=shape, fill=0, transform=ident, dtype="uint16")
        if scene.roofs
        else np.zeros(shape, np.uint16)
    )
    shadow = (
        rasterize(((g, 1) for g in scene.shadows), out_shape=shape, fill=0, transform=ident, dtype="uint8")
        if scene.shadows
        else np.zeros(shape, np.uint8)
    )
    return ground, roofs, shadow


def _light_field(rng: np.random.Generator, height: int, width: int, cell: int = 400):
    """A smooth brightness field (about 0.88..1.12): haze, vignetting, terrain.

    Returns a function of (row_start, row_stop) so strips are rendered alone.
    """
    gh, gw = height // cell + 2, width // cell + 2
    coarse = rng.uniform(0.88, 1.12, (gh, gw)).astype(np.float32)
    cols = np.arange(width) / cell
    c0 = cols.astype(int)
    cf = (cols - c0).astype(np.float32)

    def rows(r0: int, r1: int) -> np.ndarray:
        y = np.arange(r0, r1) / cell
        y0 = y.astype(int)
        yf = (y - y0).astype(np.float32)[:, None]
        band = coarse[y0] * (1 - yf) + coarse[y0 + 1] * yf  # (h, gw)
        return band[:, c0] * (1 - cf) + band[:, c0 + 1] * cf

    return rows


def render_strip(
    ground: np.ndarray,
    roofs: np.ndarray,
    shadow: np.ndarray,
    light: np.ndarray,
    palette: np.ndarray,
    roof_colours: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """RGB ``(3, h, w)`` uint8 of one strip of label rasters."""
    noise_amp = np.array([_NOISE[c] for c in Ground], np.float32)
    building = roofs > 0
    rgb = palette[ground]
    amp = noise_amp[ground]
    rgb[building] = roof_colours[roofs[building]]
    amp[building] = ROOF_NOISE
    rgb *= light[..., None]
    shade = (shadow > 0) & ~building
    rgb[shade] *= _SHADOW_RGB
    # Luminance noise, shared by the three bands like a sensor's grain.
    rgb += (rng.standard_normal(ground.shape, dtype=np.float32) * amp)[..., None]
    return np.clip(rgb, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def write_tile(
    scene: Scene,
    st: CityStyle,
    image_path: Path,
    gt_path: Path,
    transform: Affine,
    seed_seq: np.random.SeedSequence,
) -> float:
    """Render and write the image and its 0/255 mask; returns the building share."""
    ground, roofs, shadow = burn(scene)
    palette = ground_palette(st)
    light_rng, *strip_rngs = [np.random.default_rng(s) for s in seed_seq.spawn(1 + len(row_strips(scene.height, STRIP_ROWS)))]
    light = _light_field(light_rng, scene.height, scene.width)
    common = dict(width=scene.width, height=scene.height, crs=f"EPSG:{st.epsg}", transform=transform)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    gt_path.parent.mkdir(parents=True, exist_ok=True)
    building_px = 0
    with (
        rasterio.open(image_path, "w", **geotiff_profile(count=3, photometric="RGB", **common)) as img,
        rasterio.open(gt_path, "w", **geotiff_profile(count=1, **common)) as gt,
    ):
        for (r0, r1), rng in zip(row_strips(scene.height, STRIP_ROWS), strip_rngs):
            win = rasterio.windows.Window(0, r0, scene.width, r1 - r0)
            rgb = render_strip(ground[r0:r1], roofs[r0:r1], shadow[r0:r1], light(r0, r1), palette, scene.roof_colours, rng)
            img.write(rgb, window=win)
            mask = roofs[r0:r1] > 0
            building_px += int(mask.sum())
            gt.write((mask.astype(np.uint8) * 255)[None], window=win)
    return building_px / (scene.height * scene.width)
