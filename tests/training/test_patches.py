import numpy as np
import pytest
import rasterio

from service.rasters import mirror_indices, read_window
from training.data.inria import InriaDataset
from training.data.patches import GridPatchDataset, PatchGrid, grid_offsets

from ..conftest import write_image, write_mask


@pytest.mark.parametrize("start, length, size", [(-5, 20, 10), (-92, 572, 200), (3, 4, 10), (-30, 100, 7), (95, 20, 100)])
def test_mirror_indices_match_numpy_symmetric_padding(start, length, size):
    axis = np.arange(size)
    pad = max(-start, start + length - size, 0)
    padded = np.pad(axis, pad, mode="symmetric")
    assert np.array_equal(mirror_indices(start, length, size), padded[start + pad : start + pad + length])


def test_read_window_mirror_pads_every_edge(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (3, 150, 110), dtype=np.uint8)
    path = write_image(tmp_path / "a1.tif", img)
    pad = 92
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="symmetric")
    with rasterio.open(path) as src:
        # Corners, edges, the interior, and a window larger than the raster itself.
        for r, c, h, w in [(-92, -92, 120, 130), (100, 60, 142, 142), (-92, 40, 50, 30), (20, 30, 40, 40), (-92, -92, 334, 294)]:
            got = read_window(src, r, c, h, w)
            assert np.array_equal(got, padded[:, r + pad : r + pad + h, c + pad : c + pad + w]), (r, c, h, w)


def test_grid_offsets_cover_the_axis_with_the_stated_overlap():
    length, patch, overlap = 5000 + 2 * 92, 572, 92
    offsets = grid_offsets(length, patch, overlap)
    assert len(offsets) == 11  # ceil((5184 - 572) / 480) + 1
    assert offsets[0] == 0 and offsets[-1] + patch == length
    assert all(b - a == patch - overlap for a, b in zip(offsets[:-2], offsets[1:-1]))
    assert offsets[-1] - offsets[-2] <= patch - overlap  # the last one overlaps more, never less
    covered = np.zeros(length, bool)
    for o in offsets:
        covered[o : o + patch] = True
    assert covered.all()
    assert grid_offsets(300, 572, 92) == [0]  # a tile smaller than a patch: one mirrored patch
    with pytest.raises(ValueError, match="overlap"):
        grid_offsets(1000, 572, 572)


def test_patch_dataset_returns_mirror_padded_grid_patches(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (3, 200, 170), dtype=np.uint8)
    mask = (rng.random((200, 170)) > 0.7).astype(np.uint8) * 255
    write_image(tmp_path / "images" / "town1.tif", img)
    write_mask(tmp_path / "gt" / "town1.tif", mask)
    tiles = InriaDataset(tmp_path).split("all")
    grid = PatchGrid(patch=124, overlap=30, pad=20)
    ds = GridPatchDataset(tiles, grid)

    padded_img = np.pad(img, ((0, 0), (20, 20), (20, 20)), mode="symmetric")
    padded_mask = np.pad(mask, 20, mode="symmetric")
    covered = np.zeros(padded_mask.shape, bool)
    assert len(ds) == len(grid_offsets(240, 124, 30)) * len(grid_offsets(210, 124, 30))
    for k in range(len(ds)):
        _, r, c = ds.index[k]
        sample = ds[k]
        r, c = r + 20, c + 20
        assert np.array_equal(sample["image"].numpy(), padded_img[:, r : r + 124, c : c + 124])
        assert np.array_equal(sample["mask"].numpy(), (padded_mask[r : r + 124, c : c + 124] > 0).astype(np.uint8))
        covered[r : r + 124, c : c + 124] = True
    assert covered.all()
