"""Self-training: a store model's own masks as labels for the user's unlabelled imagery.

``footprints finetune --unlabelled DIR`` first segments each GeoTIFF of DIR with the base
version as served (its engine, its threshold, resampled to its resolution and back),
and then fine-tunes on those masks with the recipe's augmentation, the way Noisy Student
does: the teacher labels clean imagery, the student learns the labels under zoom,
colour and sensor degradation. What the student gains is consistency on the user's
own imagery, at every scale and look the augmentation covers; it cannot learn a
building the teacher never found, which is what real labels (``--data``) are for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from service.engines import open_engine
from service.errors import InputError
from service.outputs.segment import segment_file
from service.store.repository import ModelEntry
from service.tiling.engine import TilingEngine

from .data.inria import TILE_NAME
from .data.sources import Root

PSEUDO = "pseudo"  # the name an image gets when its own is not an Inria tile name


def unlabelled_images(folder: Path) -> list[Path]:
    """The GeoTIFFs of ``folder``: its ``images/`` (a flat or labelled root, whose
    labels are not read) or, without one, the ``.tif`` files in it."""
    if not folder.is_dir():
        raise InputError(f"{folder}: unlabelled imagery must be a folder of GeoTIFFs")
    images = folder / "images" if (folder / "images").is_dir() else folder
    found = sorted(p for p in images.iterdir() if p.suffix.lower() in (".tif", ".tiff") and p.is_file())
    if not found:
        raise InputError(f"{images}: no GeoTIFFs (.tif) to label")
    return found


def pseudo_labelled(entry: ModelEntry, roots: Sequence[Root], out: Path, progress: bool = True) -> list[Root]:
    """A flat root under ``out`` per unlabelled root: its images (linked) and the base
    version's masks of them as ``gt``, on each image's own grid; each keeps its weight."""
    engine = TilingEngine(open_engine(entry, "onnxruntime"))
    labelled: list[Root] = []
    try:
        for k, root in enumerate(roots):
            folder = out / f"{k}"
            (folder / "images").mkdir(parents=True, exist_ok=True)
            (folder / "gt").mkdir(parents=True, exist_ok=True)
            images = unlabelled_images(root.path)
            # The training reader takes <city><n>.tif names; other names are numbered,
            # past any number a user's own pseudo<n>.tif already holds.
            taken, n = {p.name for p in images if TILE_NAME.match(p.name)}, 0
            for image in tqdm(images, desc="pseudo-labels", unit="tile", disable=not progress):
                name = image.name
                if not TILE_NAME.match(name):
                    n += 1
                    while f"{PSEUDO}{n}.tif" in taken:
                        n += 1
                    name = f"{PSEUDO}{n}.tif"
                link = folder / "images" / name
                if not link.exists():
                    os.symlink(image.resolve(), link)
                segment_file(engine, image, folder / "gt" / name, progress=False)
            labelled.append(Root(folder, root.weight))
    finally:
        engine.model.close()  # type: ignore[attr-defined]
    return labelled
