"""``footprints segment`` on real GeoTIFFs: georeference, polygons, overlay, nodata, bad input."""

import json
import shutil

import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
import torch
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from service.errors import InputError
from service.rasters import RGBRaster, write_geotiff
from training.networks.model import SegmentationModel, save_checkpoint

from ...conftest import REPO, run_cli

TRANSFORM = from_origin(500_000.0, 4_600_000.0, 0.3, 0.3)
CRS = "EPSG:32616"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    amll = SegmentationModel("amll_unet", {"filters": (4, 8, 16, 32, 64)}, [110.0, 110.0, 110.0])
    nus = SegmentationModel("nus_dual_unet", {"channels": (4, 8, 16, 8, 4)}, [110.0, 110.0, 110.0])
    return {"amll": save_checkpoint(d / "amll.pt", amll), "nus": save_checkpoint(d / "nus.pt", nus)}


def _image(path, h=300, w=260, seed=0, **kw):
    rgb = np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8)
    rgb[:, 100:160, 80:200] = 240  # a bright block
    write_geotiff(path, rgb, crs=CRS, transform=TRANSFORM, **kw)
    return path


def test_segment_keeps_georeference_and_writes_every_output(tmp_path, checkpoints):
    img = _image(tmp_path / "in.tif")
    out, probs, geojson, png = (tmp_path / n for n in ("mask.tif", "prob.tif", "b.geojson", "o.png"))
    done = run_cli(
        "segment",
        str(img),
        "-o",
        str(out),
        "--checkpoint",
        str(checkpoints["amll"]),
        "--window",
        "252",
        "--probabilities",
        str(probs),
        "--polygons",
        str(geojson),
        "--overlay",
        str(png),
        "--min-area",
        "0",
        "--simplify",
        "0",
        "--no-regularize",
    )
    assert done.returncode == 0, done.stderr
    with rasterio.open(out) as m, rasterio.open(probs) as p, rasterio.open(img) as src:
        assert m.crs == src.crs and m.transform == src.transform and m.shape == src.shape
        assert p.crs == src.crs and p.transform == src.transform
        mask, prob = m.read(1), p.read(1)
        assert m.block_shapes[0] == (256, 256) and m.compression is not None
        # Cloud-Optimized GeoTIFFs, as GDAL's COG driver lays them out.
        assert m.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == p.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert set(np.unique(mask)) <= {0, 255} and 0 < (mask > 0).mean() < 1
    np.testing.assert_array_equal(mask > 0, prob >= 128)  # threshold 0.5 on the same probabilities

    collection = json.loads(geojson.read_text())
    assert collection["crs"]["properties"]["name"] == CRS
    polys = [shapely.geometry.shape(f["geometry"]) for f in collection["features"]]
    with rasterio.open(img) as src:
        bounds = shapely.box(*src.bounds)
    assert all(bounds.buffer(1e-6).contains(p) for p in polys)  # in the input's CRS, on the tile
    assert sum(p.area for p in polys) == pytest.approx((mask > 0).sum() * 0.09)  # 0.3 m pixels, as traced
    # Each building's confidence: the mean probability of the pixels inside it.
    biggest = max(range(len(polys)), key=lambda i: polys[i].area)
    inside = rasterio.features.geometry_mask([polys[biggest]], mask.shape, TRANSFORM, invert=True)
    assert collection["features"][biggest]["properties"]["confidence"] == pytest.approx(prob[inside].mean() / 255, abs=1e-4)
    assert all(f["properties"]["confidence"] >= 0.5 for f in collection["features"])  # cut at 0.5
    assert png.stat().st_size > 0


def test_polygons_are_exact_in_the_crs_and_rejoined_across_strips(tmp_path):
    from service.outputs.polygons import PolygonOptions, finish_polygons, traced_polygons

    mask = np.zeros((1200, 60), np.uint8)
    mask[10:20, 5:25] = 255  # 10 x 20 px = 3 m x 6 m = 18 m^2
    mask[1000:1100, 30:50] = 255  # crosses the 1024-row strip edge: must stay one polygon
    mask[500, 50] = 255  # one pixel, 0.09 m^2: below the minimum area
    path = tmp_path / "m.tif"
    write_geotiff(path, mask, crs=CRS, transform=TRANSFORM)
    with rasterio.open(path) as src:
        crs = src.crs.to_string()
        polys = finish_polygons(traced_polygons(src), PolygonOptions(min_area_m2=1.0, simplify_m=0.0, regularize=False), crs)
    assert crs == CRS and len(polys) == 2
    small = min(polys, key=lambda p: p.area)
    assert small.area == pytest.approx(18.0)
    x0, y0 = TRANSFORM @ (5, 20)
    x1, y1 = TRANSFORM @ (25, 10)
    assert small.bounds == pytest.approx((x0, y0, x1, y1))
    assert max(p.area for p in polys) == pytest.approx(100 * 20 * 0.09)


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857"])
def test_minimum_area_simplification_and_areas_are_metres_on_the_ground_in_any_crs(tmp_path, crs):
    """A geographic (or Web Mercator) mask: a 6 x 9 m house is kept and measured in m^2,
    a 1 m^2 speck is dropped, as in a UTM mask; the polygons stay in the mask's CRS."""
    import json

    import rasterio.warp
    from rasterio.transform import from_origin

    from service.outputs.polygons import PolygonOptions, buildings_geojson

    lat = 40.0  # where degrees of longitude and Web Mercator metres are far from ground metres
    if crs == "EPSG:4326":
        px_x, px_y, x0, y0 = 0.3 / (111_320 * np.cos(np.radians(lat))), 0.3 / 110_950, 30.0, lat
    else:  # Web Mercator's metres are ground metres / cos(latitude)
        px_x = px_y = 0.3 / np.cos(np.radians(lat))
        x0, y0 = 3_339_584.7, 4_865_942.3
    mask = np.zeros((200, 200), np.uint8)
    mask[20:50, 20:40] = 255  # 30 x 20 px of 0.3 m: 9 m x 6 m = 54 m^2
    mask[100:103, 100:103] = 255  # 0.9 m x 0.9 m: under 4 m^2
    path = tmp_path / "m.tif"
    write_geotiff(path, mask, crs=crs, transform=from_origin(x0, y0, px_x, px_y))
    doc = json.loads(buildings_geojson(path, None))
    (feature,) = doc["features"]
    assert doc["crs"]["properties"]["name"] == crs
    assert feature["properties"]["area_m2"] == pytest.approx(54.0, rel=0.02)
    with rasterio.open(path) as src:
        house = shapely.geometry.shape(feature["geometry"])
        assert shapely.box(*src.bounds).contains(house)  # still in the mask's own CRS
        # RFC 7946: the same house in WGS 84 longitude and latitude, with no crs member.
        wgs84 = json.loads(buildings_geojson(path, None, PolygonOptions(wgs84=True)))
        assert "crs" not in wgs84
        lon, lat = shapely.geometry.shape(wgs84["features"][0]["geometry"]).centroid.coords[0]
        [x], [y] = rasterio.warp.transform(src.crs, "EPSG:4326", [house.centroid.x], [house.centroid.y])
        assert (lon, lat) == pytest.approx((x, y), abs=1e-6) and lat == pytest.approx(40.0, abs=0.01)


def test_segment_dual_resolution_checkpoint(tmp_path, checkpoints):
    img = _image(tmp_path / "in.tif", h=260, w=230)
    done = run_cli(
        "segment",
        str(img),
        "-o",
        str(tmp_path / "m.tif"),
        "--checkpoint",
        str(checkpoints["nus"]),
        "--window",
        "64",
        "--overlap",
        "16",
    )
    assert done.returncode == 0, done.stderr
    with rasterio.open(tmp_path / "m.tif") as m:
        assert m.shape == (260, 230) and m.crs.to_string() == CRS


def test_nodata_and_alpha_come_out_as_not_building_and_masked(tmp_path, checkpoints):
    from service.engines.pytorch import TorchEngine
    from service.outputs.segment import segment_file
    from service.tiling.engine import EngineConfig, TilingEngine

    # A network that calls every pixel a building: only nodata can say otherwise.
    model = SegmentationModel("amll_unet", {"filters": (4, 8, 16, 32, 64)}, [110.0, 110.0, 110.0]).eval()
    with torch.no_grad():
        model.net.head.weight.zero_()
        model.net.head.bias.copy_(torch.tensor([0.0, 5.0]))
    engine = TilingEngine(TorchEngine(model, "cpu"), EngineConfig(window=252))
    rgb = np.full((3, 260, 240), 250, np.uint8)
    alpha = np.full((260, 240), 255, np.uint8)
    alpha[:, :60] = 0  # left strip transparent
    rgba = np.concatenate([rgb, alpha[None]])
    path = tmp_path / "rgba.tif"
    profile = dict(
        driver="GTiff",
        width=240,
        height=260,
        count=4,
        dtype="uint8",
        crs=CRS,
        transform=TRANSFORM,
        photometric="RGB",
        alpha="YES",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(rgba)
    segment_file(engine, path, tmp_path / "m.tif", progress=False)
    with rasterio.open(tmp_path / "m.tif") as m:
        mask, valid = m.read(1), m.dataset_mask()
    assert (mask[:, :60] == 0).all() and (mask[:, 60:] == 255).all()
    assert (valid[:, :60] == 0).all() and (valid[:, 60:] == 255).all()

    # A nodata value (no alpha): the same.
    rgb[:, 200:] = 0
    write_geotiff(tmp_path / "nd.tif", rgb, crs=CRS, transform=TRANSFORM, nodata=0)
    segment_file(engine, tmp_path / "nd.tif", tmp_path / "m2.tif", progress=False)
    with rasterio.open(tmp_path / "m2.tif") as m:
        assert (m.read(1)[200:] == 0).all() and (m.dataset_mask()[200:] == 0).all() and (m.read(1)[:200] == 255).all()


@pytest.mark.parametrize(
    "kind, message",
    [
        ("one_band", "raster has 1 band(s); expected RGB (3 bands) or RGBA"),
        ("two_bands", "raster has 2 band(s)"),
        ("four_no_alpha", "band 4 is undefined, not alpha"),
        ("uint16", "raster is uint16; expected uint8 RGB"),
        ("small", "smaller than the network's 92-px context margin"),
        ("not_tiff", "cannot be read as a raster"),
    ],
)
def test_bad_rasters_are_refused_clearly(tmp_path, checkpoints, kind, message):
    path = tmp_path / "bad.tif"
    if kind == "one_band":
        write_geotiff(path, np.zeros((1, 300, 300), np.uint8), crs=CRS, transform=TRANSFORM)
    elif kind == "two_bands":
        write_geotiff(path, np.zeros((2, 300, 300), np.uint8), crs=CRS, transform=TRANSFORM)
    elif kind == "four_no_alpha":
        with rasterio.open(
            path, "w", driver="GTiff", width=300, height=300, count=4, dtype="uint8", crs=CRS, transform=TRANSFORM
        ) as d:
            d.write(np.zeros((4, 300, 300), np.uint8))
            d.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
    elif kind == "uint16":
        write_geotiff(path, np.zeros((3, 300, 300), np.uint16), crs=CRS, transform=TRANSFORM)
    elif kind == "small":
        write_geotiff(path, np.zeros((3, 300, 50), np.uint8), crs=CRS, transform=TRANSFORM)
    elif kind == "not_tiff":
        path.write_text("hello")
    done = run_cli(
        "segment", str(path), "-o", str(tmp_path / "m.tif"), "--checkpoint", str(checkpoints["amll"]), "--window", "252"
    )
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_bad_checkpoint_and_window_are_refused_clearly(tmp_path, checkpoints):
    img = _image(tmp_path / "in.tif")
    bad_window = run_cli(
        "segment", str(img), "-o", str(tmp_path / "m.tif"), "--checkpoint", str(checkpoints["amll"]), "--window", "500"
    )
    assert (
        bad_window.returncode == 2 and "window size 500 is not valid" in bad_window.stderr and "492 and 508" in bad_window.stderr
    )
    payload = torch.load(checkpoints["amll"], weights_only=True)
    payload["network"], payload["network_args"] = "nus_dual_unet", {"channels": (4, 8, 16, 8, 4)}
    torch.save(payload, tmp_path / "wrong.pt")
    wrong = run_cli("segment", str(img), "-o", str(tmp_path / "m.tif"), "--checkpoint", str(tmp_path / "wrong.pt"))
    assert wrong.returncode == 2 and "weights do not fit network 'nus_dual_unet'" in wrong.stderr
    missing = run_cli("segment", str(img), "-o", str(tmp_path / "m.tif"), "--checkpoint", str(tmp_path / "nope.pt"))
    assert missing.returncode == 2 and "nope.pt: checkpoint file does not exist" in missing.stderr


def test_segment_without_a_model_or_with_an_unreachable_server_says_so(tmp_path):
    img = _image(tmp_path / "in.tif")
    # A store of several models that names no default cannot guess which one is meant.
    store = tmp_path / "store"
    for name in ("amll", "nus"):
        shutil.copytree(REPO / "model_store" / name, store / name)
    nothing = run_cli("segment", str(img), "-o", str(tmp_path / "m.tif"), "--store", str(store))
    assert nothing.returncode == 2 and "say which" in nothing.stderr and "Traceback" not in nothing.stderr
    down = run_cli("segment", str(img), "-o", str(tmp_path / "m.tif"), "--server", "127.0.0.1:1")
    assert down.returncode == 2 and "server 127.0.0.1:1 answered UNAVAILABLE" in down.stderr
    assert "Traceback" not in down.stderr


def test_rgb_raster_reports_validity(tmp_path):
    img = _image(tmp_path / "plain.tif")
    with RGBRaster(img) as src:
        assert not src.has_mask and src.valid_rows(0, 10) is None
        assert src.read(-5, -5, 20).shape == (3, 20, 20)
    with pytest.raises(InputError):
        RGBRaster(tmp_path / "absent.tif")


def test_segment_with_no_model_flag_writes_the_default_models_mask(tmp_path):
    """A newcomer's first command: no --model, --checkpoint or --server."""
    from training.synthetic import style, synthesize_tile

    img = synthesize_tile(tmp_path / "city", style("fairhaven"), 1, 512, 1, seed=5).image
    plain = run_cli("segment", str(img), "-o", str(tmp_path / "plain.tif"), cwd=REPO)
    assert plain.returncode == 0, plain.stderr
    default = (REPO / "model_store" / "DEFAULT").read_text().strip()
    named = run_cli("segment", str(img), "-o", str(tmp_path / "named.tif"), "--model", default, cwd=REPO)
    assert named.returncode == 0, named.stderr
    with rasterio.open(tmp_path / "plain.tif") as a, rasterio.open(tmp_path / "named.tif") as b:
        mask = a.read(1)
        assert np.array_equal(mask, b.read(1)) and a.crs == b.crs and a.transform == b.transform
    assert set(np.unique(mask)) == {0, 255}  # the real model finds buildings, not everything


def test_masks_are_cloud_optimized_with_overviews_and_keep_the_inputs_nodata(tmp_path):
    from service.outputs.sinks import GeoTiffRows
    from service.tiling.pipeline import RowBlock

    mask = np.zeros((1200, 1100), np.uint8)
    mask[100:400, 200:700] = 255
    valid = np.ones_like(mask, bool)
    valid[:, 1000:] = False  # the input's nodata strip
    sink = GeoTiffRows(tmp_path / "m.tif", 1100, 1200, CRS, TRANSFORM)
    for r0 in range(0, 1200, 500):
        sink.write(RowBlock(r0, mask[r0 : r0 + 500], valid=valid[r0 : r0 + 500]))
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif"]  # the row file is gone
    with rasterio.open(tmp_path / "m.tif") as m:
        assert m.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and m.overviews(1) == [2, 4, 8]
        assert np.array_equal(m.read(1), mask) and m.crs == CRS and m.transform == TRANSFORM
        assert np.array_equal(m.read_masks(1) > 0, valid)
        assert set(np.unique(m.read(1, out_shape=(300, 275)))) <= {0, 255}  # nearest overviews stay 0/255
