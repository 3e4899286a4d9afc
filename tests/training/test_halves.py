"""The fine-tuning experiment's split: a user's labels come from one half of an area, and
the score from the other half, which no label touches."""

from __future__ import annotations

import numpy as np
import rasterio

from training.data.inria import InriaDataset
from training.halves import split_halves


def test_halves_split_every_tile_west_and_east_within_the_label_budget(real_oam, tmp_path):
    tiles = [t for t in InriaDataset(real_oam).tiles if t.city == "zanzibar"]
    tune, east = split_halves(tiles, tmp_path, label_px=400_000)
    west = sorted((tune / "images").glob("*.tif"))
    assert [p.name for p in west] == [t.image.name for t in tiles] == [t.image.name for t in east]
    labels = 0
    for t, e in zip(tiles, east, strict=True):
        with rasterio.open(t.image) as src, rasterio.open(tune / "images" / t.image.name) as w, rasterio.open(e.image) as s:
            # The east half is the tile's right columns, pixel for pixel and in place.
            assert (s.height, s.width) == (src.height, src.width - src.width // 2)
            assert s.crs == src.crs and s.transform == src.transform @ src.transform.translation(src.width // 2, 0)
            assert np.array_equal(s.read(), src.read(window=((0, src.height), (src.width // 2, src.width))))
            # The west half starts at the tile's corner and never reaches the east half.
            assert w.transform == src.transform and w.width == src.width // 2 and w.height <= src.height
            labels += w.width * w.height
        with rasterio.open(tune / "gt" / t.image.name) as g, rasterio.open(t.gt) as ref:
            assert np.array_equal(g.read(1), ref.read(1, window=((0, g.height), (0, g.width))))
    assert 0.9 * 400_000 <= labels <= 400_000
