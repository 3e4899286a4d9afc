import numpy as np
import pytest

import training.data.inria as inria
from training.data.inria import InriaDataset, LayoutError, city_split, mean_rgb, parse_tile_name, validation_split

from ..conftest import write_image, write_mask


@pytest.mark.parametrize(
    "name, city, index",
    [("austin12.tif", "austin", 12), ("tyrol-w3.tif", "tyrol-w", 3), ("sfo36.tif", "sfo", 36), ("kampala1.tif", "kampala", 1)],
)
def test_tile_names_parse(name, city, index):
    assert parse_tile_name(f"/data/train/images/{name}") == (city, index)


@pytest.mark.parametrize(
    "name", ["Austin1.tif", "austin.tif", "austin0.tif", "austin01.tif", "austin1.png", "12.tif", "aus tin1.tif"]
)
def test_bad_tile_names_are_refused_naming_the_file(name):
    with pytest.raises(LayoutError, match=f"{name}.*does not fit the Inria layout"):
        parse_tile_name(name)


def _make_layout(root, train=None, test=None, gt_test=False):
    rgb = np.zeros((3, 8, 8), np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    for split, names in (("train", train or []), ("test", test or [])):
        for n in names:
            write_image(root / split / "images" / n, rgb)
            if split == "train" or gt_test:
                write_mask(root / split / "gt" / n, mask)


def test_reads_the_distributed_layout(tmp_path):
    ds_root = tmp_path / "AerialImageDataset"
    train = [f"{c}{i}.tif" for c in ("austin", "tyrol-w") for i in (1, 2, 6, 10)]
    _make_layout(ds_root, train=train, test=["bellingham1.tif", "sfo3.tif"])
    for root in (ds_root, tmp_path):  # the folder itself or its parent
        ds = InriaDataset(root)
        assert [t.name for t in ds.split("train")] == [
            "austin1",
            "austin2",
            "austin6",
            "austin10",
            "tyrol-w1",
            "tyrol-w2",
            "tyrol-w6",
            "tyrol-w10",
        ]
        assert all(t.gt is not None and t.gt.name == t.image.name for t in ds.split("train"))
        assert [(t.city, t.index, t.gt) for t in ds.split("test")] == [("bellingham", 1, None), ("sfo", 3, None)]
        assert ds.cities == ["austin", "bellingham", "sfo", "tyrol-w"]
    ds.check_shapes()


def test_layout_errors_name_the_file(tmp_path):
    _make_layout(tmp_path, train=["austin1.tif", "austin2.tif"])
    (tmp_path / "train" / "images" / "notes.txt").write_text("x")
    with pytest.raises(LayoutError, match="notes.txt"):
        InriaDataset(tmp_path)
    (tmp_path / "train" / "images" / "notes.txt").unlink()
    (tmp_path / "train" / "images" / ".DS_Store").write_text("hidden files are not tiles")
    InriaDataset(tmp_path)

    (tmp_path / "train" / "gt" / "austin2.tif").unlink()
    with pytest.raises(LayoutError, match="austin2.tif: image without ground truth"):
        InriaDataset(tmp_path)
    write_mask(tmp_path / "train" / "gt" / "austin2.tif", np.zeros((8, 8)))
    write_mask(tmp_path / "train" / "gt" / "austin3.tif", np.zeros((8, 8)))
    with pytest.raises(LayoutError, match="austin3.tif: ground truth without an image"):
        InriaDataset(tmp_path)
    write_image(tmp_path / "train" / "images" / "austin3.tif", np.zeros((3, 8, 8)))
    write_mask(tmp_path / "train" / "gt" / "austin3.tif", np.zeros((8, 9)))
    with pytest.raises(LayoutError, match="austin3.tif: mask is 9x8 but image"):
        InriaDataset(tmp_path).check_shapes()


def test_missing_or_foreign_folders_are_refused(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        InriaDataset(tmp_path / "nowhere")
    (tmp_path / "photos").mkdir()
    with pytest.raises(LayoutError, match="not an Inria layout"):
        InriaDataset(tmp_path)


def test_amll_validation_split_and_city_split(tmp_path):
    train = [f"{c}{i}.tif" for c in ("austin", "vienna") for i in range(1, 9)]
    _make_layout(tmp_path, train=train)
    tiles = InriaDataset(tmp_path).split("train")
    fit, val = validation_split(tiles)
    assert sorted({t.index for t in val}) == [1, 2, 3, 4, 5]
    assert sorted({t.index for t in fit}) == [6, 7, 8]
    assert len(val) == 10 and len(fit) == 6
    assert {t.city for t in val} == {t.city for t in fit} == {"austin", "vienna"}

    rest, held = city_split(tiles, ["vienna"])
    assert {t.city for t in held} == {"vienna"} and {t.city for t in rest} == {"austin"}
    with pytest.raises(LayoutError, match="unknown cities.*chicago"):
        city_split(tiles, ["chicago"])


def test_reads_the_real_imagery_layout(real_oam):
    ds = InriaDataset(real_oam)
    assert ds.cities == ["kampala", "nepal", "zanzibar"]
    assert len(ds.split("all")) == 6
    ds.check_shapes()


def test_global_mean_rgb_is_streamed_exactly_and_cached(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 300, 200), dtype=np.uint8)  # several blocks, uneven sizes
    b = rng.integers(0, 256, (3, 40, 70), dtype=np.uint8)
    write_image(tmp_path / "d" / "images" / "x1.tif", a)
    write_image(tmp_path / "d" / "images" / "x2.tif", b)
    tiles = InriaDataset(tmp_path / "d").split("all")
    expected = np.concatenate([a.reshape(3, -1), b.reshape(3, -1)], axis=1).mean(axis=1)
    cache = tmp_path / "cache"
    np.testing.assert_allclose(mean_rgb(tiles, cache_dir=cache, progress=False), expected, rtol=1e-12)
    assert len(list(cache.glob("mean_rgb-*.json"))) == 1

    # A second call is answered from the cache without reading a pixel.
    def no_reading(*args, **kwargs):
        raise AssertionError("cache miss: pixels were read again")

    monkeypatch.setattr(inria.rasterio, "open", no_reading)
    np.testing.assert_allclose(mean_rgb(tiles, cache_dir=cache, progress=False), expected, rtol=1e-12)
    monkeypatch.undo()

    # Replacing a tile invalidates the cache.
    write_image(tmp_path / "d" / "images" / "x2.tif", np.full((3, 40, 70), 7, np.uint8))
    changed = np.concatenate([a.reshape(3, -1), np.full((3, 2800), 7)], axis=1).mean(axis=1)
    np.testing.assert_allclose(mean_rgb(tiles, cache_dir=cache, progress=False), changed, rtol=1e-12)
