import numpy as np
import rasterio
from PIL import Image

from service.overlay import overlay_array

from .conftest import run_cli


def test_overlay_colours_hits_false_alarms_and_misses():
    rgb = np.full((2, 2, 3), 100, np.uint8)
    pred = np.array([[1, 1], [0, 0]])
    ref = np.array([[1, 0], [1, 0]])
    out = overlay_array(rgb, pred, ref).astype(int)
    hit, false_alarm, miss, neither = out[0, 0], out[0, 1], out[1, 0], out[1, 1]
    assert hit[1] > hit[0] and hit[1] > hit[2]  # green
    assert false_alarm[0] > false_alarm[1] and false_alarm[0] > false_alarm[2]  # red
    assert miss[2] > miss[0] and miss[2] > miss[1]  # blue
    assert (neither == 100).all()


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
