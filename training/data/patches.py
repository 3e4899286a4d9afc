"""Grid patch sampling over mirror-padded tiles (method 1's training patches).

Where to cut is decided from shapes alone (:func:`service.windows.grid_offsets`, shared
with the tiler); reading happens in :func:`service.geoio.read_window`, which mirror
pads whatever runs off the tile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from service.errors import InputError
from service.rasters import read_window
from service.tiling.plans import grid_offsets

from .inria import Tile

# Method 1: pad every tile by 92 px (the U-Net's valid-convolution margin), cut
# 572-px patches on a grid whose neighbours overlap by 92 px.
AMLL_PAD = 92
AMLL_PATCH = 572
AMLL_OVERLAP = 92


@dataclass(frozen=True)
class PatchGrid:
    """A grid of square patches over a tile padded by ``pad`` pixels on every side."""

    patch: int = AMLL_PATCH
    overlap: int = AMLL_OVERLAP
    pad: int = AMLL_PAD

    def windows(self, height: int, width: int) -> list[tuple[int, int]]:
        """Top-left ``(row, col)`` of each patch, in tile pixels (negative = padding)."""
        rows = grid_offsets(height + 2 * self.pad, self.patch, self.overlap)
        cols = grid_offsets(width + 2 * self.pad, self.patch, self.overlap)
        return [(r - self.pad, c - self.pad) for r in rows for c in cols]


class _TileFiles(Dataset):
    """Labelled tiles whose files each process opens once, lazily, so a dataset is safe to
    hand to DataLoader workers (open handles do not cross process boundaries)."""

    def __init__(self, tiles: Sequence[Tile]) -> None:
        missing = [t.name for t in tiles if t.gt is None]
        if missing:
            raise InputError(f"tiles without ground truth cannot train: {missing[:5]}")
        self.tiles = list(tiles)
        self._open: dict[int, tuple[rasterio.io.DatasetReader, rasterio.io.DatasetReader]] = {}

    def _sources(self, i: int) -> tuple[rasterio.io.DatasetReader, rasterio.io.DatasetReader]:
        if i not in self._open:
            t = self.tiles[i]
            self._open[i] = (rasterio.open(t.image), rasterio.open(t.gt))
        return self._open[i]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = {}  # workers reopen
        return state


class GridPatchDataset(_TileFiles):
    """All grid patches of a set of tiles, pooled: item ``i`` is one (tile, window).

    Returns ``{"image": uint8 (3, P, P), "mask": uint8 (P, P) of 0/1}`` for the input
    window; ``transform`` (augmentation, normalisation) is applied to that dict.
    """

    def __init__(
        self,
        tiles: Sequence[Tile],
        grid: PatchGrid = PatchGrid(),
        transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        super().__init__(tiles)
        self.grid = grid
        self.transform = transform
        index = []
        for i, t in enumerate(self.tiles):
            with rasterio.open(t.image) as src:
                index += [(i, r, c) for r, c in grid.windows(src.height, src.width)]
        # One int32 row per patch: the pool for 155 Inria tiles is ~19k rows.
        self.index = np.asarray(index, dtype=np.int32).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        i, r, c = (int(v) for v in self.index[k])
        img_src, gt_src = self._sources(i)
        p = self.grid.patch
        image = read_window(img_src, r, c, p, p, bands=[1, 2, 3])
        mask = read_window(gt_src, r, c, p, p, bands=[1])[0]
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "mask": torch.from_numpy((mask > 0).astype(np.uint8)),
        }
        return self.transform(sample) if self.transform else sample


class RandomPatchDataset(_TileFiles):
    """Random ``patch`` crops (method 2, and the multi-area real-imagery recipes); with
    ``context``, also the ``2 * patch`` context crop with the same centre, averaged
    2x2 down to ``patch`` (as the tiler does).

    Item ``n`` is drawn from a generator seeded by ``(seed, n)``: tile chosen with
    probability ``weights`` (default: in proportion to its area), position uniform
    on it (mirror padded off the edge, so tiles smaller than a patch serve too).
    Returns ``image`` uint8 ``(3, P, P)``, ``mask`` uint8 ``(P, P)`` and, with
    ``context``, ``context`` float32 ``(3, P, P)``.

    ``scale`` ``(lo, hi)``: a zoom drawn log-uniformly per sample, in tile pixels per
    patch pixel. The patch is read ``P x zoom`` tile pixels wide and resized to ``P``
    (antialiased; the mask where the resized mask is >= 0.5), so with tiles at 0.3 m,
    ``(0.5, 2)`` shows the network buildings as imagery of 0.15-0.6 m would. Why: roofs
    come in every size, and a user's stated resolution is not always right.
    """

    def __init__(
        self,
        tiles: Sequence[Tile],
        patch: int,
        seed: int,
        weights: Sequence[float] | None = None,
        context: bool = False,
        scale: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        super().__init__(tiles)
        self.patch, self.seed = patch, seed
        self.shapes = []
        for t in self.tiles:
            with rasterio.open(t.image) as src:
                self.shapes.append((src.height, src.width))
        area = np.array([h * w for h, w in self.shapes], np.float64)
        chosen = np.asarray(weights, np.float64) if weights is not None else area
        if chosen.shape != area.shape or not (chosen >= 0).all() or chosen.sum() <= 0:
            raise InputError(f"need one non-negative weight per tile ({len(area)}), got {chosen.shape}")
        self.weights = chosen / chosen.sum()
        self.context = context
        lo, hi = scale
        if not 0 < lo <= hi:
            raise InputError(f"a zoom range needs 0 < lo <= hi, got {list(scale)}")
        self.scale = (float(lo), float(hi))

    def __len__(self) -> int:
        return 2**62  # drawn, not enumerated

    def __getitem__(self, n: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, n, 0xD0A1])
        i = int(rng.choice(len(self.tiles), p=self.weights))
        h, w = self.shapes[i]
        p = self.patch
        lo, hi = self.scale
        # The zoom is drawn only when asked for, so unzoomed runs draw what they always drew.
        q = p if lo == hi == 1 else max(8, round(p * float(np.exp(rng.uniform(np.log(lo), np.log(hi))))))
        r = int(rng.integers(0, max(1, h - q + 1)))
        c = int(rng.integers(0, max(1, w - q + 1)))
        img_src, gt_src = self._sources(i)
        full = read_window(img_src, r, c, q, q, bands=[1, 2, 3])
        mask = read_window(gt_src, r, c, q, q, bands=[1])[0]
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(full)),
            "mask": torch.from_numpy((mask > 0).astype(np.uint8)),
        }
        if q != p:
            item = {
                "image": _resized(item["image"], p).round_().to(torch.uint8),
                "mask": (_resized(item["mask"][None], p)[0] >= 0.5).to(torch.uint8),
            }
        if self.context:
            big = read_window(img_src, r - q // 2, c - q // 2, 2 * q, 2 * q, bands=[1, 2, 3]).astype(np.float32)
            if q == p:
                item["context"] = torch.from_numpy(big.reshape(3, p, 2, p, 2).mean(axis=(2, 4)))
            else:
                item["context"] = _resized(torch.from_numpy(big), p)
        return item


def _resized(x: torch.Tensor, side: int) -> torch.Tensor:
    """``(C, H, W)`` resized to ``side`` x ``side`` as float (bilinear, antialiased when shrinking)."""
    return F.interpolate(x[None].float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0]


class RandomDualPatchDataset(RandomPatchDataset):
    """Method 2's samples: random crops with their context crops."""

    def __init__(self, tiles: Sequence[Tile], patch: int, seed: int, weights: Sequence[float] | None = None) -> None:
        super().__init__(tiles, patch, seed, weights, context=True)
