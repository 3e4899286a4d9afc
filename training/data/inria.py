"""Reader for the Inria Aerial Image Labeling layout.

``AerialImageDataset/{train,test}/{images,gt}/<city><n>.tif`` as distributed, or a
single folder with ``images/`` and ``gt/`` (the layout of ``shared/data/real-oam``).
This module only lists and validates files and computes the global mean RGB;
cutting patches lives in :mod:`training.data.patches`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from tqdm import tqdm

from service.errors import InputError

# City names are lowercase words joined by hyphens (tyrol-w), the index is 1-based.
TILE_NAME = re.compile(r"^(?P<city>[a-z]+(?:-[a-z]+)*)(?P<index>[1-9][0-9]*)\.tif$")

# Method 1 (AMLL) validates on tiles 1-5 of each city and trains on 6-36.
AMLL_VALIDATION_INDICES = range(1, 6)


class LayoutError(InputError):
    """A file or folder does not fit the Inria layout; the message names it."""


def parse_tile_name(path: str | Path) -> tuple[str, int]:
    """``austin12.tif`` -> ``("austin", 12)``; anything else is a :class:`LayoutError`."""
    name = Path(path).name
    match = TILE_NAME.match(name)
    if match is None:
        raise LayoutError(
            f"{path}: file name does not fit the Inria layout; expected <city><n>.tif "
            f"with a lowercase city name and an index from 1 (e.g. austin12.tif, tyrol-w3.tif)"
        )
    return match["city"], int(match["index"])


@dataclass(frozen=True)
class Tile:
    """One image tile and, where the layout has it, its ground-truth mask."""

    city: str
    index: int
    image: Path
    gt: Path | None
    split: str

    @property
    def name(self) -> str:
        return f"{self.city}{self.index}"


def tile_files(folder: Path) -> dict[str, Path]:
    """``{file name: path}`` of the tiles in ``folder``; a file that is not
    ``<city><n>.tif`` is a :class:`LayoutError` naming it. Hidden files (editor and
    OS droppings) are not tiles and are skipped."""
    files = {p.name: p for p in sorted(folder.iterdir()) if not p.name.startswith(".")}
    for p in files.values():
        parse_tile_name(p)
    return files


def scan_split(images_dir: Path, gt_dir: Path | None, split: str) -> list[Tile]:
    """List the tiles of one split folder, pairing each image with its mask."""
    images = tile_files(images_dir)
    masks: dict[str, Path] = {}
    if gt_dir is not None and gt_dir.is_dir():
        masks = tile_files(gt_dir)
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise LayoutError(f"{gt_dir / orphans[0]}: ground truth without an image in {images_dir}")
        missing = sorted(set(images) - set(masks))
        if missing:
            raise LayoutError(f"{images_dir / missing[0]}: image without ground truth in {gt_dir}")
    tiles = []
    for name, image in images.items():
        city, index = parse_tile_name(image)
        tiles.append(Tile(city, index, image, masks.get(name), split))
    return sorted(tiles, key=lambda t: (t.city, t.index))


class InriaDataset:
    """The tiles under a root in the Inria layout.

    ``root`` may be ``AerialImageDataset/`` itself, its parent, or a single split
    folder holding ``images/`` (and ``gt/``); the latter's tiles get split ``"all"``.
    """

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise LayoutError(f"{root}: dataset folder does not exist")
        if (root / "AerialImageDataset").is_dir():
            root = root / "AerialImageDataset"
        self.root = root
        splits = [s for s in ("train", "test") if (root / s / "images").is_dir()]
        if splits:
            self.tiles = [t for s in splits for t in scan_split(root / s / "images", root / s / "gt", s)]
        elif (root / "images").is_dir():
            self.tiles = scan_split(root / "images", root / "gt", "all")
        else:
            raise LayoutError(
                f"{root}: not an Inria layout; expected train/images (and train/gt, test/images) or images/ (and gt/) inside it"
            )
        if not self.tiles:
            raise LayoutError(f"{root}: no tiles found")

    def split(self, name: str) -> list[Tile]:
        """Tiles of one split (``train``, ``test`` or ``all``)."""
        found = [t for t in self.tiles if t.split == name]
        if not found:
            have = sorted({t.split for t in self.tiles})
            raise LayoutError(f"{self.root}: no '{name}' split; this dataset has {have}")
        return found

    @property
    def cities(self) -> list[str]:
        return sorted({t.city for t in self.tiles})

    def check_shapes(self) -> None:
        """Open every header once: each mask must be 1-band on its image's grid."""
        for t in self.tiles:
            if t.gt is None:
                continue
            with rasterio.open(t.image) as img, rasterio.open(t.gt) as gt:
                if (img.height, img.width) != (gt.height, gt.width):
                    raise LayoutError(f"{t.gt}: mask is {gt.width}x{gt.height} but image {t.image} is {img.width}x{img.height}")
                if gt.count != 1:
                    raise LayoutError(f"{t.gt}: mask has {gt.count} bands, expected 1")


def validation_split(
    tiles: Sequence[Tile], val_indices: Iterable[int] = AMLL_VALIDATION_INDICES
) -> tuple[list[Tile], list[Tile]]:
    """Method 1's split: tiles with index in ``val_indices`` (1-5) validate, the rest train."""
    val_set = set(val_indices)
    train = [t for t in tiles if t.index not in val_set]
    val = [t for t in tiles if t.index in val_set]
    return train, val


def city_split(tiles: Sequence[Tile], val_cities: Iterable[str]) -> tuple[list[Tile], list[Tile]]:
    """Split by city, as the benchmark does: ``val_cities`` are never seen in training."""
    val_set = set(val_cities)
    unknown = val_set - {t.city for t in tiles}
    if unknown:
        raise LayoutError(f"unknown cities {sorted(unknown)}; have {sorted({t.city for t in tiles})}")
    return [t for t in tiles if t.city not in val_set], [t for t in tiles if t.city in val_set]


def _cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "footprints"
    return Path(os.environ.get("FOOTPRINTS_CACHE_DIR", default))


def _files_key(paths: Sequence[Path]) -> str:
    # Path, size and mtime: a changed or replaced tile invalidates the cached mean.
    h = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def mean_rgb(tiles: Sequence[Tile], cache_dir: Path | None = None, progress: bool = True) -> np.ndarray:
    """The one global mean RGB over ``tiles``' images, streamed block by block and cached.

    Method 1 subtracts this single value (not a per-tile mean) from every input.
    The cache is keyed on the files' paths, sizes and modification times.
    """
    paths = [t.image for t in tiles]
    if not paths:
        raise ValueError("mean_rgb needs at least one tile")
    cache = (cache_dir or _cache_dir()) / f"mean_rgb-{_files_key(paths)}.json"
    if cache.is_file():
        return np.asarray(json.loads(cache.read_text())["mean_rgb"], dtype=np.float64)

    sums = np.zeros(3, dtype=np.float64)
    count = 0
    for path in tqdm(paths, desc="mean RGB", unit="tile", disable=not progress):
        with rasterio.open(path) as src:
            if src.count < 3:
                raise LayoutError(f"{path}: image has {src.count} bands, expected RGB")
            for _, window in src.block_windows(1):
                block = src.read([1, 2, 3], window=window)
                sums += block.reshape(3, -1).sum(axis=1, dtype=np.uint64)
                count += block.shape[1] * block.shape[2]
    mean = sums / count
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"mean_rgb": mean.tolist(), "pixels": count, "files": [str(p) for p in paths]}))
    return mean
