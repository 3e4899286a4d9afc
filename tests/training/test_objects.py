"""Object scores: buildings matched one-to-one at IoU >= 0.5, counted by hand here on
masks drawn for the cases that make pixel IoU and object F1 disagree."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.objects import object_counts

from ..conftest import run_cli, write_mask


def _tiles() -> dict[str, tuple[np.ndarray, np.ndarray, tuple[int, int, int]]]:
    """name: (reference, prediction, (matched, predicted, reference)) counted by hand."""
    out = {}
    # Two houses side by side in the reference; the prediction joins them into one blob:
    # the blob's IoU with either house is under 0.5, so 0 matches of 1 predicted, 2 real.
    ref = np.zeros((60, 60), np.uint8)
    ref[10:30, 10:20] = 255
    ref[10:30, 21:31] = 255
    pred = np.zeros_like(ref)
    pred[10:30, 10:31] = 255
    out["touching1.tif"] = (ref, pred, (0, 1, 2))
    # One house predicted in two pieces (70 % and 30 %): the larger piece matches (IoU
    # 0.7), the smaller is a false building; a third house is found exactly; a diagonal
    # neighbour pixel makes no separate building (8-connected).
    ref = np.zeros((60, 60), np.uint8)
    ref[5:25, 5:25] = 255
    ref[40:50, 40:50] = 255
    pred = np.zeros_like(ref)
    pred[5:19, 5:25] = 255
    pred[20:25, 5:25] = 255
    pred[40:50, 40:50] = 255
    pred[50, 50] = 255  # touches (49, 49) at a corner: the same building
    out["split1.tif"] = (ref, pred, (2, 3, 2))
    # An empty tile with one false building.
    ref = np.zeros((60, 60), np.uint8)
    pred = np.zeros_like(ref)
    pred[0:4, 0:4] = 255
    out["empty1.tif"] = (ref, pred, (0, 1, 0))
    return out


@pytest.mark.parametrize("name", list(_tiles()))
def test_object_counts_match_a_count_by_hand(name):
    ref, pred, (matched, predicted, reference) = _tiles()[name]
    c = object_counts(pred, ref)
    assert (c.matched, c.predicted, c.reference) == (matched, predicted, reference)


def test_evaluate_reports_object_scores_per_city_and_overall(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for name, (r, p, _) in _tiles().items():
        write_mask(gt / name, r)
        write_mask(pred / name, p)
    out = tmp_path / "report.json"
    done = run_cli("evaluate", "--pred", str(pred), "--gt", str(gt), "--json", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    # Pooled by hand: 2 matched of 5 predicted and 4 real buildings.
    overall = report["overall"]
    assert (overall["objects_matched"], overall["objects_predicted"], overall["objects_reference"]) == (2, 5, 4)
    assert overall["object_precision"] == pytest.approx(2 / 5) and overall["object_recall"] == pytest.approx(2 / 4)
    assert overall["object_f1"] == pytest.approx(2 * 2 / (5 + 4))
    assert report["cities"]["split"]["object_f1"] == pytest.approx(4 / 5)
    assert report["cities"]["empty"]["object_recall"] is None and report["cities"]["empty"]["object_precision"] == 0
    assert "| object F1 |" in done.stdout
    assert overall["boundary_iou"] is not None and 0 <= overall["boundary_iou"] <= 1


@pytest.fixture(scope="module")
def real_buildings(real_oam, tmp_path_factory):
    """The default model's masks and buildings (regularised, and as traced) of the shared
    real tiles, with their references."""
    import rasterio

    from service.engines import open_engine
    from service.outputs.polygons import PolygonOptions, finish_polygons, traced_polygons
    from service.outputs.segment import SegmentOptions, segment_file
    from service.store.repository import ModelStore
    from service.tiling.engine import TilingEngine

    from ..conftest import REPO

    store = ModelStore(REPO / "model_store")
    engine = TilingEngine(open_engine(store.get(store.default_name()), "auto"))
    out = tmp_path_factory.mktemp("buildings")
    tiles = []
    for name in ("zanzibar1", "kampala2", "nepal1"):
        mask, geojson = out / f"{name}.tif", out / f"{name}.geojson"
        segment_file(engine, real_oam / "images" / f"{name}.tif", mask, SegmentOptions(polygons=geojson), progress=False)
        with rasterio.open(mask) as src, rasterio.open(real_oam / "gt" / f"{name}.tif") as gt:
            crs = src.crs.to_string()
            traced = finish_polygons(traced_polygons(src), PolygonOptions(regularize=False), crs)
            tiles.append((json.loads(geojson.read_text()), traced, gt.read(1), src.transform))
    return store.default_name(), tiles


def test_regularised_buildings_are_square_valid_and_carry_confidence_area_and_model(real_buildings):
    import shapely

    from service.outputs.regularize import right_angle_share

    model, tiles = real_buildings
    features = [f for doc, *_ in tiles for f in doc["features"]]
    polys = [shapely.geometry.shape(f["geometry"]) for f in features]
    traced = [p for _, t, *_ in tiles for p in t]
    assert len(polys) > 100
    assert all(p.is_valid and p.geom_type == "Polygon" for p in polys)
    assert all(0 <= f["properties"]["confidence"] <= 1 and f["properties"]["area_m2"] > 0 for f in features)
    assert {f["properties"]["model"] for f in features} == {model}
    # Mappers' right angles: most corners of the regularised outlines, few of the traced.
    assert right_angle_share(traced) < 0.4 < 0.8 <= right_angle_share(polys)


def test_regularising_keeps_object_f1_within_two_points(real_buildings):
    import shapely

    from training.objects import ObjectCounts, components, match, polygon_labels

    _, tiles = real_buildings
    square, traced = ObjectCounts(), ObjectCounts()
    for doc, raw, ref, transform in tiles:
        reference = components(ref)
        polys = [shapely.geometry.shape(f["geometry"]) for f in doc["features"]]
        square += match(*polygon_labels(polys, ref.shape, transform), *reference)
        traced += match(*polygon_labels(raw, ref.shape, transform), *reference)
    assert traced.reference > 100 and traced.f1 > 0.3
    assert square.f1 >= traced.f1 - 0.02


def test_boundary_iou_falls_when_outlines_move_while_pixel_iou_barely_does():
    from training.metric import Counts
    from training.objects import boundary_counts

    ref = np.zeros((200, 200), np.uint8)
    ref[50:150, 50:150] = 255  # a 30 m square house at 0.3 m
    fat = np.zeros_like(ref)
    fat[47:153, 47:153] = 255  # drawn 3 px (about 1 m) too wide on every side
    assert Counts.from_masks(fat, ref).iou > 0.88
    # The bands (3 px inside each outline) no longer overlap at all.
    assert boundary_counts(fat, ref).iou == 0.0
    assert boundary_counts(ref, ref).iou == 1.0
    shifted = np.roll(ref, 1, axis=1)  # 1 px off: a third of each band is lost
    assert 0.4 < boundary_counts(shifted, ref).iou < 0.8 < Counts.from_masks(shifted, ref).iou
