"""The colour-lookup reference floor, end to end through the CLI."""

import numpy as np
import rasterio
from PIL import Image

from ..conftest import run_cli


def test_baseline_labels_test_cities_on_their_grid_with_overlays(tiny_cities, tmp_path):
    pred, png = tmp_path / "pred", tmp_path / "png"
    done = run_cli("baseline", "--data", str(tiny_cities), "--out", str(pred), "--overlays", str(png))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in pred.iterdir()) == ["fairhaven1.tif", "fairhaven2.tif"]
    with rasterio.open(pred / "fairhaven1.tif") as p, rasterio.open(tiny_cities / "test/images/fairhaven1.tif") as img:
        assert p.crs == img.crs and p.transform == img.transform and p.shape == img.shape
        assert set(np.unique(p.read(1))) <= {0, 255}
    assert Image.open(png / "fairhaven1.png").size == (256, 256)
    scored = run_cli("evaluate", "--pred", str(pred), "--gt", str(tiny_cities / "test/gt"))
    assert scored.returncode == 0 and "fairhaven" in scored.stdout
