"""footprints diff: hand-made layers with a known answer: new, missing and changed
buildings, counted per tile, whatever CRS the reference comes in."""

from __future__ import annotations

import json

import numpy as np
import shapely
from rasterio.warp import transform_geom

from service.rasters import write_geotiff

from ...conftest import run_cli
from ..servers import CRS, TRANSFORM


def _layer(path, polys, crs):
    features = [{"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(p)} for p in polys]
    doc = {"type": "FeatureCollection", "features": features}
    if crs != "EPSG:4326":
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(doc))
    return path


def test_diff_finds_new_missing_and_changed_buildings_per_tile(tmp_path):
    x0, y0 = TRANSFORM.c, TRANSFORM.f  # the tiles' corner (UTM 16N); y grows north

    def house(dx, dy, w=10.0, h=8.0):
        return shapely.box(x0 + dx, y0 - dy - h, x0 + dx + w, y0 - dy)

    # Two 300 x 300 px tiles (90 m) side by side.
    tiles = tmp_path / "tiles"
    for i, name in enumerate(("west1", "east1")):
        t = TRANSFORM @ TRANSFORM.translation(300 * i, 0)
        write_geotiff(tiles / f"{name}.tif", np.zeros((300, 300), np.uint8), crs=CRS, transform=t)
    ours = [
        house(5, 5),  # the same as theirs: unchanged
        house(30, 5),  # theirs is shifted by 6 of 10 m: IoU 0.25, changed
        house(60, 40),  # nothing of theirs: new (west)
        house(120, 40),  # new (east)
    ]
    theirs = [house(5, 5), house(36, 5), house(150, 60)]  # the last: missing (east)
    # The reference comes in WGS 84, as an OSM extract does.
    theirs_wgs84 = [
        shapely.geometry.shape(g) for g in transform_geom(CRS, "EPSG:4326", [shapely.geometry.mapping(p) for p in theirs])
    ]
    done = run_cli(
        "diff", "--buildings", str(_layer(tmp_path / "ours.geojson", ours, CRS)),
        "--reference", str(_layer(tmp_path / "osm.geojson", theirs_wgs84, "EPSG:4326")),
        "--out", str(tmp_path / "diff"), "--tiles", str(tiles),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    counts = json.loads((tmp_path / "diff" / "counts.json").read_text())
    assert (counts["unchanged"], counts["new"], counts["missing"], counts["changed"]) == (1, 2, 1, 1)
    assert counts["tiles"] == {
        "east1": {"new": 1, "missing": 1, "changed": 0},
        "west1": {"new": 1, "missing": 0, "changed": 1},
    }
    changed = json.loads((tmp_path / "diff" / "changed.geojson").read_text())
    (feature,) = changed["features"]
    assert feature["properties"]["iou"] == 0.25 and changed["crs"]["properties"]["name"] == CRS
    missing = json.loads((tmp_path / "diff" / "missing.geojson").read_text())["features"]
    assert shapely.geometry.shape(missing[0]["geometry"]).equals_exact(theirs[2], 1e-3)  # back in our CRS
    assert "new 2" in done.stdout and "east1: new 1, missing 1, changed 0" in done.stdout

    bad = run_cli(
        "diff",
        "--buildings",
        str(tmp_path / "none.geojson"),
        "--reference",
        str(tmp_path / "osm.geojson"),
        "--out",
        str(tmp_path / "x"),
    )
    assert bad.returncode != 0 and "none.geojson: no such buildings file" in bad.stderr
