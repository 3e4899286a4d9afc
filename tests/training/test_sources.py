"""Training data from several roots: layouts, resampling to 0.3 m from the
georeference, area-balanced sampling weights, hold-outs."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from service.errors import InputError
from service.rasters import write_geotiff
from training.data.patches import RandomPatchDataset
from training.data.sources import Root, area_of, ground_resolution, load_sources, parse_root


def _crop_real(real_oam, out, name: str, size: int = 160) -> None:
    """A small crop of a real tile, georeference and mask kept, in a flat root."""
    for part in ("images", "gt"):
        with rasterio.open(real_oam / part / name) as src:
            window = Window(0, 0, size, size)
            data = src.read(window=window)
            write_geotiff(out / part / name, data, crs=src.crs, transform=src.window_transform(window))


def test_roots_resample_mercator_tiles_to_the_ground_resolution(real_oam, tiny_cities, tmp_path, monkeypatch):
    monkeypatch.setenv("FOOTPRINTS_CACHE_DIR", str(tmp_path / "cache"))
    flat = tmp_path / "real"
    _crop_real(real_oam, flat, "nepal1.tif")  # EPSG:3857 at 27.6 N: 0.2986 m nominal, 0.265 m on the ground
    _crop_real(real_oam, flat, "kampala1.tif")  # at 0.3 N: 0.2986 m on the ground too
    assert ground_resolution(flat / "images/nepal1.tif") == pytest.approx(0.2646, abs=0.002)

    sources = load_sources([Root(flat), Root(tiny_cities, 0.5)])
    by_name = {t.name: t for t in sources.tiles}
    nepal, kampala = by_name["nepal1"], by_name["kampala1"]
    assert kampala.image == flat / "images/kampala1.tif"  # within 2 %: left as it is
    with rasterio.open(nepal.image) as img, rasterio.open(nepal.gt) as gt, rasterio.open(flat / "images/nepal1.tif") as orig:
        assert img.shape == gt.shape == (141, 141)  # 160 x 0.2646 / 0.3
        assert ground_resolution(nepal.image) == pytest.approx(0.3, abs=0.003)
        assert np.allclose(img.bounds, orig.bounds, atol=0.5)  # same ground, fewer pixels
        assert set(np.unique(gt.read(1))) <= {0, 255}  # masks resampled by nearest neighbour
    # Synthetic train tiles (Inria layout, already 0.3 m) come as they are; test tiles never.
    assert {t.city for t in sources.tiles} == {"nepal", "kampala", "ashford", "brookline"}
    assert all(t.image.parent.parent.name == "train" for t in sources.tiles if t.city in ("ashford", "brookline"))


def test_each_area_is_drawn_with_its_roots_weight_whatever_its_size(real_oam, tiny_cities, tmp_path, monkeypatch):
    monkeypatch.setenv("FOOTPRINTS_CACHE_DIR", str(tmp_path / "cache"))
    flat = tmp_path / "real"
    _crop_real(real_oam, flat, "zanzibar1.tif", 300)
    _crop_real(real_oam, flat, "zanzibar2.tif", 100)
    _crop_real(real_oam, flat, "kampala1.tif", 120)
    sources = load_sources([Root(flat, 1.0), Root(tiny_cities, 0.5)])
    share = {a: float(sum(w for w, b in zip(sources.weights, sources.areas) if b == a)) for a in set(sources.areas)}
    # Two real areas at weight 1, two synthetic cities at 0.5: 1/3, 1/3, 1/6, 1/6.
    assert share == pytest.approx({"zanzibar": 1 / 3, "kampala": 1 / 3, "ashford": 1 / 6, "brookline": 1 / 6})
    z1, z2 = (sources.weights[[t.name for t in sources.tiles].index(n)] for n in ("zanzibar1", "zanzibar2"))
    assert z1 / z2 == pytest.approx(9.0, rel=0.02)  # within an area, by pixels
    # The patch sampler follows those weights.
    data = RandomPatchDataset(sources.tiles, 64, seed=1, weights=sources.weights)
    assert np.allclose(data.weights, sources.weights)
    item = data[5]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (64, 64) and "context" not in item


def test_hold_outs_take_whole_areas_and_roots_parse(real_oam, tmp_path, monkeypatch):
    monkeypatch.setenv("FOOTPRINTS_CACHE_DIR", str(tmp_path / "cache"))
    flat = tmp_path / "real"
    for name in ("nepal1.tif", "kampala1.tif"):
        _crop_real(real_oam, flat, name, 96)
    (flat / "images/banepa1.tif").write_bytes((flat / "images/nepal1.tif").read_bytes())
    (flat / "gt/banepa1.tif").write_bytes((flat / "gt/nepal1.tif").read_bytes())
    same = [["nepal", "banepa"]]
    assert area_of("banepa", same) == "nepal+banepa" and area_of("kampala", same) == "kampala"
    kept = load_sources([Root(flat)], same, holdout=["banepa"])
    assert {t.city for t in kept.tiles} == {"kampala"}  # banepa held out takes nepal with it
    with pytest.raises(InputError, match="no training tiles left"):
        load_sources([Root(flat)], same, holdout=["nepal", "kampala"])
    assert parse_root("/data/x:0.3") == Root(flat.__class__("/data/x"), 0.3)
    assert parse_root("/data/x") == Root(flat.__class__("/data/x"), 1.0)
    with pytest.raises(InputError, match="must be > 0"):
        parse_root("/data/x:0")
