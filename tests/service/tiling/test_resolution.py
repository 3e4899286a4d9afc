"""Resolution-aware tiling: a raster is served at its model's ground resolution and its
outputs come back on its own grid; the same place at 0.15, 0.3 and 0.6 m gives the same
buildings; resolutions no model can serve are refused with a message that says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from service.engines import open_engine
from service.errors import InputError
from service.outputs.segment import SegmentOptions, segment_file
from service.rasters import ground_resolution, write_geotiff
from service.store.repository import ModelStore
from service.tiling.engine import ArraySource, TilingEngine
from service.tiling.pipeline import TileRun
from service.tiling.resample import BackToRaster, Resolution, resample_image

from ...conftest import REPO
from ..servers import CRS, TRANSFORM


def test_rows_brought_back_cover_the_raster_once_with_the_right_values():
    # A smooth plane survives the round trip (both directions), row blocks of any size.
    for raster, model in (((300, 200), (150, 100)), ((150, 100), (300, 200)), ((301, 199), (173, 115))):
        yy, xx = np.mgrid[0 : model[0], 0 : model[1]].astype(np.float32)
        plane = (yy / model[0] + xx / model[1]) / 2
        back, rows, r0 = BackToRaster(raster, model), [], 0
        for m0 in range(0, model[0], 37):
            got = back.feed(m0, plane[m0 : m0 + 37])
            if got is not None:
                assert got[0] == r0, "raster rows come out in order, none twice"
                rows.append(got[1])
                r0 += len(got[1])
        out = np.concatenate(rows)
        assert out.shape == raster
        ry, rx = np.mgrid[0 : raster[0], 0 : raster[1]].astype(np.float32)
        want = (((ry + 0.5) / raster[0] - 0.5 / model[0]) + ((rx + 0.5) / raster[1] - 0.5 / model[1])) / 2
        inner = (slice(2, -2), slice(2, -2))  # the edges clamp
        assert np.abs(out[inner] - want[inner]).max() < 0.02


def test_within_two_percent_nothing_is_resampled():
    assert Resolution((0.297, 0.297), 0.3).model_shape(5000, 5000) == (5000, 5000)
    assert Resolution((0.15, 0.15), 0.3).model_shape(5000, 4000) == (2500, 2000)
    assert Resolution((0.6, 0.3), 0.3).model_shape(100, 100) == (100, 200)


@pytest.mark.parametrize("metres", [0.03, 1.5, float("nan"), -0.3])
def test_resolutions_no_model_serves_are_refused(metres):
    with pytest.raises(InputError, match="per pixel"):
        Resolution((metres, metres), 0.3)


class Mean:
    """A window model whose answer is each pixel's brightness: any resampling error
    shows in its output."""

    device, name, resolution_m, threshold = "cpu", "mean", 0.3, 0.5

    def __init__(self) -> None:
        from service.tiling.geometry import OverlapWindows

        self.geometry = OverlapWindows({"cpu": 256}, multiple=32, margin=16, overlap=32)

    def infer(self, inputs):
        return inputs[0].astype(np.float32).mean(axis=1) / 255.0

    def window_bytes(self, window):
        return window * window * 64


class Keep:
    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []

    def write(self, block):
        self.rows.append(block.probabilities.copy())

    def close(self):
        pass


def test_a_tile_at_another_resolution_is_segmented_at_the_models_and_returned_on_its_own_grid():
    rng = np.random.default_rng(3)
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (3, 60, 80), dtype=np.uint8), 8, axis=1), 8, axis=2)  # 480 x 640
    engine = TilingEngine(Mean())
    exact = TileRun(engine, ArraySource(rgb), [], raster_m=(0.3, 0.3))
    assert exact.factor == 1.0 and exact.back is None  # at 0.3 m: stitched as it is
    for metres in (0.15, 0.6):
        keep = Keep()
        run = TileRun(engine, ArraySource(rgb), [keep], raster_m=(metres, metres)).run()
        assert run.factor == pytest.approx(metres / 0.3)
        assert run.model_shape == (round(480 * metres / 0.3), round(640 * metres / 0.3))
        prob = np.concatenate(keep.rows)
        assert prob.shape == (480, 640)
        # Away from the blocks' edges, the brightness comes back where it was.
        want = rgb.astype(np.float32).mean(axis=0) / 255.0
        inner = np.zeros((60, 80), bool)
        inner[1:-1, 1:-1] = True
        centres = (slice(4, None, 8), slice(4, None, 8))
        assert np.abs(prob[centres] - want[centres])[inner].max() < 0.05


@pytest.fixture(scope="module")
def default_engine():
    store = ModelStore(REPO / "model_store")
    return TilingEngine(open_engine(store.get(store.default_name()), "auto"))


def _version(src_path: Path, out: Path, metres: float) -> Path:
    """The real tile as imagery of ``metres`` per pixel would show it, georeferenced so."""
    with rasterio.open(src_path) as src:
        gx, _ = ground_resolution(src.crs, src.transform, src.width, src.height)
        rgb = src.read([1, 2, 3])[:, :1024, :1024]
        shape = (round(1024 * gx / metres),) * 2
        transform = src.transform @ Affine.scale(1024 / shape[1], 1024 / shape[0])
        write_geotiff(out, resample_image(rgb, shape), crs=src.crs, transform=transform)
    return out


def test_a_real_tile_at_015_and_06_m_gives_the_buildings_it_gives_at_03(default_engine, real_oam, tmp_path):
    source = real_oam / "images" / "zanzibar1.tif"  # 0.297 m on the ground
    masks, summaries = {}, {}
    for metres in (0.3, 0.15, 0.6):
        image = _version(source, tmp_path / f"at-{metres}.tif", metres)
        out = tmp_path / f"mask-{metres}.tif"
        summaries[metres] = segment_file(default_engine, image, out, progress=False)
        with rasterio.open(image) as a, rasterio.open(out) as m:
            # Shape, CRS and transform: the input's own.
            assert (m.width, m.height, m.crs, m.transform) == (a.width, a.height, a.crs, a.transform)
            masks[metres] = m.read(1) > 0
    assert summaries[0.3]["resample_factor"] == 1.0
    assert summaries[0.15]["resample_factor"] == pytest.approx(0.5, abs=0.01)
    assert summaries[0.6]["resample_factor"] == pytest.approx(2.0, abs=0.02)
    ref = masks[0.3]
    assert 0.02 < ref.mean() < 0.5  # buildings, and not everything
    # Compared on the 0.3 m grid: the 0.15 m mask by majority of its 2 x 2 pixels, the 0.6 m one repeated.
    fine = masks[0.15][: 2 * ref.shape[0], : 2 * ref.shape[1]]
    fine = fine.reshape(ref.shape[0], 2, ref.shape[1], 2).mean(axis=(1, 3)) >= 0.5
    coarse = np.repeat(np.repeat(masks[0.6], 2, axis=0), 2, axis=1)[: ref.shape[0], : ref.shape[1]]
    for name, other in (("0.15 m", fine), ("0.6 m", coarse)):
        h, w = min(ref.shape[0], other.shape[0]), min(ref.shape[1], other.shape[1])
        agree = float((ref[:h, :w] == other[:h, :w]).mean())
        assert agree >= 0.95, f"{name}: {100 * agree:.1f} % of pixels agree with the 0.3 m mask"


def test_gsd_states_a_resolution_and_out_of_range_ones_are_refused(default_engine, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (3, 200, 300), dtype=np.uint8)
    image = tmp_path / "nogeo.tif"
    write_geotiff(image, rgb, crs=None, transform=Affine.identity())  # no georeference: served as it is
    out = tmp_path / "m.tif"
    assert segment_file(default_engine, image, out, progress=False)["resample_factor"] == 1.0
    stated = segment_file(default_engine, image, out, SegmentOptions(gsd_m=0.15), progress=False)
    assert stated["resample_factor"] == pytest.approx(0.5) and stated["ground_resolution_m"] == 0.15
    with rasterio.open(out) as m:
        assert (m.width, m.height) == (300, 200)
    far = tmp_path / "far.tif"
    write_geotiff(far, rgb, crs=CRS, transform=TRANSFORM @ Affine.scale(10))  # 3 m
    with pytest.raises(InputError, match=r"3 m per pixel is outside what this model serves \(0.05-1.2 m"):
        segment_file(default_engine, far, out, progress=False)
    with pytest.raises(InputError, match="outside what this model serves"):
        segment_file(default_engine, image, out, SegmentOptions(gsd_m=0.02), progress=False)
