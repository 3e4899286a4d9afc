"""Where a tile's time goes: the stages of an in-process tile add up to its time, with the
model answered by the null engine (what benchmarks/frontend.py measures)."""

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from service.engines import ENGINES, open_engine
from service.outputs.polygons import PolygonOptions
from service.outputs.segment import SegmentOptions, segment_file
from service.rasters import write_geotiff
from service.store.repository import ModelStore
from service.tiling.engine import TilingEngine

from ...conftest import REPO


@pytest.mark.parametrize("gsd", [0.3, 0.6])
def test_the_stages_of_a_null_engine_tile_add_up_to_its_time(tmp_path, gsd):
    entry = ModelStore(REPO / "model_store").find(None)  # the default model's geometry and plan
    engine = TilingEngine(open_engine(entry, "null"))
    assert engine.model.engine == "null"
    image = tmp_path / "in.tif"
    rgb = np.random.default_rng(0).integers(0, 256, (3, 1200, 1400), dtype=np.uint8)
    write_geotiff(image, rgb, crs="EPSG:32636", transform=from_origin(500_000, 0, gsd, gsd))
    opts = SegmentOptions(probabilities=tmp_path / "p.tif", polygons=tmp_path / "b.geojson", polygon=PolygonOptions())
    summary = segment_file(engine, image, tmp_path / "m.tif", opts, progress=False)
    stages = summary["stages"]
    expected = {"window reads", "model", "stitch", "encode", "polygons"} | ({"resample"} if gsd != 0.3 else set())
    assert set(stages) == expected, stages
    # Every stage ran in this thread in turn: together they are the tile's time, but for
    # planning and opening the raster.
    assert sum(stages.values()) == pytest.approx(summary["seconds"], rel=0.1, abs=0.05)
    with rasterio.open(tmp_path / "m.tif") as m:
        assert not m.read(1).any()  # zeros in, no building out


def test_the_cli_offers_every_engine():
    from service.cli import BACKENDS

    assert BACKENDS == ENGINES
