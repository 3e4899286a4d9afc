import hashlib

import numpy as np
import pytest
import rasterio

from training.data.inria import InriaDataset
from training.synthetic import CITY_STYLES, synthesize

from ..conftest import run_cli


def _pixels(path):
    with rasterio.open(path) as src:
        return src.read()


def _digest(path):
    return hashlib.sha256(_pixels(path).tobytes()).hexdigest()


def test_same_seed_same_tiles_whatever_else_is_generated(tiny_cities, tmp_path):
    # fairhaven2 alone, in a fresh run, is pixel for pixel the tile made beside other cities.
    synthesize(tmp_path, size=256, tiles_per_city=2, seed=3, cities=["fairhaven"], progress=False)
    for kind in ("images", "gt"):
        assert _digest(tmp_path / "test" / kind / "fairhaven2.tif") == _digest(tiny_cities / "test" / kind / "fairhaven2.tif")
    other = tmp_path / "other"
    synthesize(other, size=256, tiles_per_city=2, seed=4, cities=["fairhaven"], progress=False)
    assert _digest(other / "test" / "images" / "fairhaven2.tif") != _digest(tmp_path / "test" / "images" / "fairhaven2.tif")


def test_tiles_are_georeferenced_in_utm_at_inria_resolution(tiny_cities):
    with (
        rasterio.open(tiny_cities / "train/images/ashford1.tif") as a,
        rasterio.open(tiny_cities / "train/images/ashford2.tif") as b,
    ):
        for src in (a, b):
            assert src.crs.is_projected and 32601 <= src.crs.to_epsg() <= 32660  # a UTM north zone
            assert src.res == (0.3, 0.3)
            assert (src.count, src.dtypes[0]) == (3, "uint8")
            assert src.compression is not None and src.block_shapes[0] == (256, 256)  # tiled
        # Neighbouring tiles of a city abut: the second starts where the first ends.
        assert b.bounds.left == pytest.approx(a.bounds.right)
        assert b.bounds.top == pytest.approx(a.bounds.top)
    with (
        rasterio.open(tiny_cities / "train/gt/ashford1.tif") as gt,
        rasterio.open(tiny_cities / "train/images/ashford1.tif") as img,
    ):
        assert (gt.count, gt.dtypes[0]) == (1, "uint8")
        assert gt.crs == img.crs and gt.transform == img.transform and gt.shape == img.shape


def test_cities_differ_and_split_by_city(tiny_cities):
    ds = InriaDataset(tiny_cities)
    assert {t.city for t in ds.split("train")} == {"ashford", "brookline"}
    assert {t.city for t in ds.split("test")} == {"fairhaven"}
    assert all(t.gt is not None for t in ds.tiles)  # synthetic test cities keep their truth
    styles = {s.name: s for s in CITY_STYLES}
    assert {s.split for s in CITY_STYLES} == {"train", "test"}
    assert len({s.roofs for s in CITY_STYLES}) == len(CITY_STYLES)  # every city has its own palette
    assert styles["brookline"].building_fill > styles["cedarvale"].building_fill


def test_masks_are_binary_and_mark_the_buildings(tmp_path):
    synthesize(tmp_path, size=768, seed=0, cities=["brookline"], progress=False)
    mask = _pixels(tmp_path / "train/gt/brookline1.tif")[0]
    img = _pixels(tmp_path / "train/images/brookline1.tif").astype(np.float32)
    assert set(np.unique(mask)) == {0, 255}
    share = (mask > 0).mean()
    assert 0.05 < share < 0.6  # a dense city centre
    # The mask sits on the roofs: where it changes, the image changes far more than
    # between two neighbouring roof pixels (a mask off by a few pixels would not).
    grey = img.mean(axis=0)
    step = np.abs(np.diff(grey, axis=1))
    building = mask > 0
    edge = building[:, 1:] != building[:, :-1]
    inside = building[:, 1:] & building[:, :-1]
    assert step[edge].mean() > 3 * step[inside].mean()
    shifted_edge = np.roll(edge, 3, axis=1)
    assert step[edge].mean() > 1.5 * step[shifted_edge & ~edge].mean()


def test_synth_cli_writes_the_layout_and_refuses_unknown_cities(tmp_path):
    done = run_cli(
        "synth", "--out", str(tmp_path), "--size", "128", "--tiles-per-city", "1", "--cities", "dunmore,juniper", "--seed", "5"
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "train/images").iterdir()) == ["dunmore1.tif"]
    assert sorted(p.name for p in (tmp_path / "test/gt").iterdir()) == ["juniper1.tif"]
    bad = run_cli("synth", "--out", str(tmp_path), "--size", "128", "--cities", "atlantis")
    assert bad.returncode == 2 and "unknown synthetic city 'atlantis'" in bad.stderr and "ashford" in bad.stderr
