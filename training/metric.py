"""The benchmark's metric: building-class IoU and pixel accuracy, pooled.

Counts are accumulated (summed) over windows, tiles and cities before dividing,
as the Inria benchmark scores a submission; the mean of per-tile IoUs is a
different number and is never computed here. Depends on numpy only, so the
service can import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Counts:
    """Pixel confusion counts of the building class (pooled by addition)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @classmethod
    def from_masks(cls, pred: np.ndarray, ref: np.ndarray) -> Counts:
        """Count a prediction against a reference; any non-zero pixel is building."""
        if pred.shape != ref.shape:
            raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
        # One pass: code 0..3 = 2*pred + ref, then a 4-bin histogram.
        code = (pred != 0).view(np.uint8) * 2 + (ref != 0).view(np.uint8)
        tn, fn, fp, tp = np.bincount(code.ravel(), minlength=4).tolist()
        return cls(tp=tp, fp=fp, fn=fn, tn=tn)

    @classmethod
    def from_dict(cls, c: dict[str, Any]) -> Counts:
        """Counts written as JSON (``{"tp": .., "fp": .., "fn": .., "tn": ..}``, extra keys ignored)."""
        return cls(*(int(c[k]) for k in ("tp", "fp", "fn", "tn")))

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def intersection(self) -> int:
        return self.tp

    @property
    def union(self) -> int:
        return self.tp + self.fp + self.fn

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def iou(self) -> float:
        """Intersection over union; NaN when neither mask has a building pixel."""
        return self.tp / self.union if self.union else float("nan")

    @property
    def accuracy(self) -> float:
        """Correctly labelled pixels over all pixels; NaN for no pixels."""
        return (self.tp + self.tn) / self.total if self.total else float("nan")

    def as_dict(self) -> dict[str, float | int | None]:
        def finite(x: float) -> float | None:
            return None if np.isnan(x) else x

        return {
            "iou": finite(self.iou),
            "accuracy": finite(self.accuracy),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
        }


def pooled(counts: list[Counts]) -> Counts:
    """Sum counts (tiles of a city, or cities of a set) before any division."""
    total = Counts()
    for c in counts:
        total = total + c
    return total
