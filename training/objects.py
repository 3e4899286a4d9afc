"""Object-level scores: buildings, not pixels, and how well their outlines sit.

A building is an 8-connected component of a mask (or one polygon, rasterised). A
predicted building and a reference building match when their IoU is at least 0.5
(SpaceNet's rule); matching is one-to-one, best IoU first. Precision is matches over
predicted buildings, recall matches over reference buildings, and like the pixel
counts they are pooled (summed) over tiles before dividing. No area filter unless
asked (``min_px``).

Boundary IoU (Cheng et al., 2021) scores outlines: the IoU of the two masks' inner bands,
the pixels within ``BOUNDARY_PX`` of each mask's edge, pooled over tiles. Pixel IoU barely
moves when every house is drawn a metre too fat; boundary IoU falls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_IOU = 0.5
BOUNDARY_PX = 3  # the band's width: about 1 m at 0.3 m


@dataclass
class ObjectCounts:
    """Matched, predicted and reference buildings (pooled by addition)."""

    matched: int = 0
    predicted: int = 0
    reference: int = 0

    def __add__(self, other: ObjectCounts) -> ObjectCounts:
        return ObjectCounts(self.matched + other.matched, self.predicted + other.predicted, self.reference + other.reference)

    @property
    def precision(self) -> float:
        return self.matched / self.predicted if self.predicted else float("nan")

    @property
    def recall(self) -> float:
        return self.matched / self.reference if self.reference else float("nan")

    @property
    def f1(self) -> float:
        """2 matches over predicted plus reference buildings; NaN when there are none."""
        total = self.predicted + self.reference
        return 2 * self.matched / total if total else float("nan")

    def as_dict(self) -> dict[str, float | int | None]:
        def finite(x: float) -> float | None:
            return None if np.isnan(x) else x

        return {
            "object_precision": finite(self.precision),
            "object_recall": finite(self.recall),
            "object_f1": finite(self.f1),
            "objects_matched": self.matched,
            "objects_predicted": self.predicted,
            "objects_reference": self.reference,
        }


def components(mask: np.ndarray, min_px: int = 0) -> tuple[np.ndarray, int]:
    """8-connected building components of ``mask`` (non-zero is building), labelled
    1..n, with components under ``min_px`` pixels dropped."""
    from scipy import ndimage

    labels, n = ndimage.label(mask != 0, structure=np.ones((3, 3), bool))
    if min_px > 0 and n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = np.flatnonzero(sizes >= min_px)
        keep = keep[keep > 0]
        relabel = np.zeros(n + 1, labels.dtype)
        relabel[keep] = np.arange(1, len(keep) + 1)
        labels, n = relabel[labels], len(keep)
    return labels, int(n)


def match(pred: np.ndarray, n_pred: int, ref: np.ndarray, n_ref: int, min_iou: float = MIN_IOU) -> ObjectCounts:
    """One-to-one matches at IoU >= ``min_iou`` between two label images (0: none)."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    area_p = np.bincount(pred.ravel(), minlength=n_pred + 1)
    area_r = np.bincount(ref.ravel(), minlength=n_ref + 1)
    both = (pred > 0) & (ref > 0)
    key = pred[both].astype(np.int64) * (n_ref + 1) + ref[both]
    pairs, inter = np.unique(key, return_counts=True)
    p, r = pairs // (n_ref + 1), pairs % (n_ref + 1)
    iou = inter / (area_p[p] + area_r[r] - inter)
    used_p, used_r = set(), set()
    for i in np.argsort(-iou, kind="stable"):
        if iou[i] < min_iou:
            break
        if p[i] not in used_p and r[i] not in used_r:
            used_p.add(p[i])
            used_r.add(r[i])
    return ObjectCounts(len(used_p), n_pred, n_ref)


def object_counts(pred: np.ndarray, ref: np.ndarray, min_px: int = 0) -> ObjectCounts:
    """Building matches between a predicted and a reference mask."""
    return match(*components(pred, min_px), *components(ref, min_px))


def polygon_labels(polys: Sequence, shape: tuple[int, int], transform) -> tuple[np.ndarray, int]:
    """Polygons (in the grid's CRS) burnt into a label image on the grid: each its own
    building, however close to its neighbours."""
    from rasterio.features import rasterize

    if not polys:
        return np.zeros(shape, np.int32), 0
    labels = rasterize(((g, i + 1) for i, g in enumerate(polys)), out_shape=shape, transform=transform, dtype="int32")
    return labels, len(polys)


@dataclass
class BoundaryCounts:
    """Intersection and union of two masks' boundary bands (pooled by addition)."""

    intersection: int = 0
    union: int = 0

    def __add__(self, other: BoundaryCounts) -> BoundaryCounts:
        return BoundaryCounts(self.intersection + other.intersection, self.union + other.union)

    @property
    def iou(self) -> float:
        return self.intersection / self.union if self.union else float("nan")


def boundary_band(mask: np.ndarray, width: int = BOUNDARY_PX) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` pixels of its edge (the tile's border is
    not an edge: the band is what erosion removes, the outside padded as building)."""
    from scipy import ndimage

    inside = mask != 0
    eroded = ndimage.binary_erosion(inside, structure=np.ones((3, 3), bool), iterations=width, border_value=1)
    return inside & ~eroded


def boundary_counts(pred: np.ndarray, ref: np.ndarray, width: int = BOUNDARY_PX) -> BoundaryCounts:
    p, r = boundary_band(pred, width), boundary_band(ref, width)
    return BoundaryCounts(int(np.count_nonzero(p & r)), int(np.count_nonzero(p | r)))
