"""Touching buildings come out as separate buildings, where the probability says so."""

import json

import numpy as np
import pytest
from rasterio.transform import from_origin

from service.outputs.instances import separate
from service.outputs.polygons import PolygonOptions, buildings_geojson
from service.rasters import write_geotiff


def _terrace(scale: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Three 8 m x 10 m houses wall to wall (one blob in the mask) at 0.3 m / ``scale``,
    the network less sure along the two shared walls; a lone 2 m x 2 m shed no seed fits
    in; and a 30 m hall with no dip inside."""
    p = np.zeros((120, 200), np.float32)
    p[10:43, 10:90] = 0.95  # the terrace: 33 x 80 px
    p[10:43, 36:38] = 0.6  # shared walls: still building, less sure
    p[10:43, 63:65] = 0.6
    p[70:77, 20:27] = 0.6  # the shed
    p[60:110, 100:190] = 0.9  # the hall
    if scale > 1:
        p = np.kron(p, np.ones((scale, scale), np.float32))
    return (p >= 0.5).astype(np.uint8) * 255, p


def test_touching_houses_split_along_the_probabilitys_valley_and_cover_the_mask_exactly():
    mask, p = _terrace()
    labels, n = separate(mask, p, gsd_m=0.3)
    assert n == 5  # three houses, the shed, the hall
    assert np.array_equal(labels > 0, mask > 0)  # no pixel changes class: pixel IoU cannot move
    houses = [labels[25, 20], labels[25, 50], labels[25, 80]]
    assert len(set(houses)) == 3 and 0 not in houses
    # Each split runs along a wall: every house keeps its own side.
    assert (labels[10:43, 10:36] == houses[0]).all() and (labels[10:43, 39:63] == houses[1]).all()
    assert len(np.unique(labels[60:110, 100:190])) == 1  # no valley inside the hall: one building


def test_the_seeds_are_measured_on_the_ground_not_in_pixels():
    mask, p = _terrace(scale=2)  # the same houses at 0.15 m
    assert separate(mask, p, gsd_m=0.15)[1] == 5
    # Told the first terrace is 0.075 m imagery, its houses are 2 m x 2.5 m: too small
    # for a seed 2 m inside, so nothing is split (the terrace stays one component).
    small_mask, small_p = _terrace()
    assert separate(small_mask, small_p, gsd_m=0.075)[1] == 3


def test_an_empty_mask_and_mismatched_shapes():
    labels, n = separate(np.zeros((5, 5), np.uint8), np.zeros((5, 5), np.float32), 0.3)
    assert n == 0 and not labels.any()
    with pytest.raises(ValueError, match="shape"):
        separate(np.zeros((5, 5), np.uint8), np.zeros((5, 6), np.uint8), 0.3)


def test_geojson_has_one_building_per_house_unless_told_not_to_separate(tmp_path):
    mask, p = _terrace()
    path = tmp_path / "m.tif"
    write_geotiff(path, mask, crs="EPSG:32636", transform=from_origin(500_000, 0, 0.3, 0.3))
    p8 = np.rint(p * 255).astype(np.uint8)
    opts = PolygonOptions(min_area_m2=1.0)
    apart = json.loads(buildings_geojson(path, p8, opts))["features"]
    together = json.loads(buildings_geojson(path, p8, PolygonOptions(min_area_m2=1.0, separate=False)))["features"]
    assert len(apart) == 5 and len(together) == 3
    # The houses are about 8 m x 10 m each, and each is confident.
    houses = sorted((f for f in apart if f["properties"]["area_m2"] < 100 and f["properties"]["area_m2"] > 10), key=str)
    assert len(houses) == 3
    assert all(70 < f["properties"]["area_m2"] < 90 and f["properties"]["confidence"] > 0.85 for f in houses)


def test_the_request_carries_every_polygon_control_to_the_server():
    from service.api.convert import polygon_options
    from service.client import polygon_options_pb

    for opts in (PolygonOptions(), PolygonOptions(2.0, 0.0, False, True, False)):
        assert polygon_options(polygon_options_pb(opts)) == opts
