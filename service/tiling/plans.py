"""Window plans: where to cut a raster for a model, decided from shapes alone (which
plan a model gets is its geometry's business: :mod:`service.tiling.geometry`).

Three kinds:

* **Large windows** (valid-convolution U-Nets, method 1). A window of input side
  ``n`` yields ``n - 2m`` output pixels (``m`` = 92 for the AMLL U-Net). Windows
  are read ``m`` px beyond their output on every side (mirror padded at the
  raster's edges) and start at output offsets that are multiples of the
  network's total stride (16), so every window sees the pooling grid that the
  network would see on the whole mirror-padded raster at once. Each output pixel
  is then taken from exactly one window and the stitched mask *equals*
  monolithic inference: no blending is needed.
* **Dual-resolution windows** (NUS, method 2). Output windows of side ``s`` (384)
  overlap by ``v`` px; each reads its ``s`` crop and the ``2s`` context crop with
  the same centre. Overlaps are blended with separable linear ramps (see
  :func:`ramp`).
* **Overlap windows** (same-padding networks: a pretrained-encoder U-Net, SegNet).
  The output is as large as the input, but pixels near a window's border saw zero
  padding instead of image. Each window of side ``n`` drops a ``m``-px margin on
  every side, and the kept cores (``n - 2m``) overlap by ``v`` px, blended with the
  same ramps as dual windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from service.errors import InputError


def grid_offsets(length: int, patch: int, overlap: int) -> list[int]:
    """Start positions of ``patch``-long windows covering ``[0, length)``.

    Neighbours start ``patch - overlap`` apart; the last window is moved back to end
    exactly at ``length``, so nothing is left uncovered (it overlaps its neighbour
    by more than ``overlap``). The count is ``ceil((length - patch) / stride) + 1``.
    A ``length`` shorter than ``patch`` gets one window at 0, which runs off the
    end and is mirror padded when read.
    """
    if patch <= 0:
        raise InputError(f"patch size must be positive, got {patch}")
    if not 0 <= overlap < patch:
        raise InputError(f"overlap must be in [0, patch), got {overlap} for patch {patch}")
    if length <= patch:
        return [0]
    stride = patch - overlap
    offsets = list(range(0, length - patch, stride))
    offsets.append(length - patch)
    return offsets


@dataclass(frozen=True)
class Window:
    """One model window.

    ``reads``: top-left ``(row, col)`` and side of each input crop, in raster
    pixels (may be negative or run past the raster: mirror padded).
    ``out_row, out_col``: raster position of the window's output pixel (0, 0).
    ``keep``: the raster rectangle ``(r0, r1, c0, c1)`` this window writes.
    """

    reads: tuple[tuple[int, int, int], ...]
    out_row: int
    out_col: int
    out_size: int
    keep: tuple[int, int, int, int]
    crop: int = 0  # px the model's output carries beyond ``out_size`` on each side (dropped)


def _large_axis(length: int, out: int, stride: int) -> list[tuple[int, int, int]]:
    """(offset, keep_start, keep_stop) along one axis for valid-conv windows."""
    step = (out // stride) * stride
    offsets = [0]
    while offsets[-1] + out < length:
        # The last window starts as late as the stride allows, so it wastes least.
        last = -(-(length - out) // stride) * stride
        offsets.append(min(offsets[-1] + step, last))
    keeps = offsets[1:] + [length]
    return [(o, o, min(k, length)) for o, k in zip(offsets, keeps)]


@dataclass(frozen=True)
class LargeWindowPlan:
    """Valid-convolution windows of input side ``window``; see the module docstring."""

    window: int
    margin: int
    stride: int

    def __post_init__(self) -> None:
        if self.window - 2 * self.margin < self.stride:
            raise InputError(
                f"window {self.window} leaves {self.window - 2 * self.margin} output px, fewer than the "
                f"network's stride {self.stride}; use at least {2 * self.margin + self.stride}"
            )

    @property
    def out(self) -> int:
        return self.window - 2 * self.margin

    def axis(self, length: int) -> list[tuple[int, int, int]]:
        return _large_axis(length, self.out, self.stride)

    def windows(self, height: int, width: int) -> list[Window]:
        m, n = self.margin, self.window
        return [
            Window(((r - m, c - m, n),), r, c, self.out, (k0, k1, j0, j1))
            for r, k0, k1 in self.axis(height)
            for c, j0, j1 in self.axis(width)
        ]


def fit_large_window(lengths: tuple[int, ...], max_window: int, margin: int, stride: int, is_valid) -> int:
    """The smallest valid window <= ``max_window`` that needs, on every axis in
    ``lengths``, no more windows than ``max_window`` does.

    Stitching is exact whatever the window, so a smaller window with the same
    window count gives the same mask with less computation (a 5000-px tile: 3 x 3
    windows of 1868 instead of 2636, about half the pixels computed).
    """

    def counts(window: int) -> list[int]:
        plan = LargeWindowPlan(window, margin, stride)
        return [len(plan.axis(n)) for n in lengths]

    target = counts(max_window)
    for size in range(2 * margin + stride, max_window + 1):
        if is_valid(size) and all(c <= t for c, t in zip(counts(size), target)):
            return size
    return max_window


def ramp(size: int, overlap: int) -> np.ndarray:
    """Blending weight along one window side: rises linearly across the overlap at
    each end, 1 in between, never 0.

    Why this rule: a window's edge pixels saw the least context (the convolutions'
    zero padding), so they count least; neighbouring ramps cross-fade, and the
    normalised sum is continuous across window borders, so no seam can appear.
    Separable weights over a product grid sum to a product of two 1-D sums, so
    normalising needs no second full-size plane.
    """
    i = np.arange(size, dtype=np.float32)
    return np.minimum(1.0, np.minimum(i + 1, size - i) / (overlap + 1)).astype(np.float32)


@dataclass(frozen=True)
class BlendedPlan:
    """Output windows of side ``window`` overlapping by ``overlap`` px, blended with
    :func:`ramp` weights (dual and overlap windows)."""

    window: int
    overlap: int

    def offsets(self, length: int) -> list[int]:
        return grid_offsets(length, self.window, self.overlap)

    def weight_sums(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-row and per-column sums of the ramps; their outer product normalises."""
        w = ramp(self.window, self.overlap)
        sums = []
        for length in (height, width):
            acc = np.zeros(length, np.float32)
            for o in self.offsets(length):
                k = min(self.window, length - o)
                acc[o : o + k] += w[:k]
            sums.append(acc)
        return sums[0], sums[1]


@dataclass(frozen=True)
class DualWindowPlan(BlendedPlan):
    """NUS windows: output side ``window``, context twice that, ``overlap`` px blended."""

    window: int = 384
    overlap: int = 64
    multiple: int = 16

    def __post_init__(self) -> None:
        if self.window % self.multiple or self.window < 2 * self.multiple:
            raise InputError(
                f"dual-resolution window must be a multiple of {self.multiple} and at least "
                f"{2 * self.multiple} (e.g. 384), got {self.window}"
            )
        if not 0 <= self.overlap < self.window // 2:
            raise InputError(f"overlap must be in [0, {self.window // 2}), got {self.overlap}")

    @property
    def context_margin(self) -> int:
        return self.window // 2

    def windows(self, height: int, width: int) -> list[Window]:
        s, h = self.window, self.window // 2
        return [
            Window(((r, c, s), (r - h, c - h, 2 * s)), r, c, s, (r, min(r + s, height), c, min(c + s, width)))
            for r in self.offsets(height)
            for c in self.offsets(width)
        ]


@dataclass(frozen=True)
class OverlapWindowPlan(BlendedPlan):
    """Same-padding windows: input side ``side``, ``margin`` px dropped on each side,
    the cores (``window`` = ``side - 2 margin``) overlapping by ``overlap`` px."""

    window: int = 448
    overlap: int = 64
    margin: int = 32
    multiple: int = 32

    @classmethod
    def for_input(cls, side: int, margin: int, overlap: int, multiple: int) -> OverlapWindowPlan:
        need = 2 * margin + max(2 * overlap + 1, multiple)
        smallest = need + (-need) % multiple
        if side % multiple or side < smallest:
            raise InputError(
                f"window size {side} is not valid for this same-padding network: use a multiple of {multiple}, "
                f"at least {smallest} (each window drops {margin} px per side and blends {overlap} px)"
            )
        return cls(side - 2 * margin, overlap, margin, multiple)

    @property
    def side(self) -> int:
        return self.window + 2 * self.margin

    def windows(self, height: int, width: int) -> list[Window]:
        m, n, s = self.margin, self.side, self.window
        return [
            Window(((r - m, c - m, n),), r, c, s, (r, min(r + s, height), c, min(c + s, width)), crop=m)
            for r in self.offsets(height)
            for c in self.offsets(width)
        ]


def fit_overlap_window(lengths: tuple[int, ...], plan: OverlapWindowPlan) -> OverlapWindowPlan:
    """The smallest overlap window that needs, on every axis in ``lengths``, no more
    windows than ``plan`` does (as :func:`fit_large_window`; a raster smaller than the
    window gets one window fitted to it, not one that is mostly mirror padding)."""
    counts = [len(plan.offsets(n)) for n in lengths]
    for side in range(plan.multiple, plan.side, plan.multiple):
        try:
            smaller = OverlapWindowPlan.for_input(side, plan.margin, plan.overlap, plan.multiple)
        except InputError:
            continue
        if all(len(smaller.offsets(n)) <= c for n, c in zip(lengths, counts)):
            return smaller
    return plan


class TilePlan(NamedTuple):
    """Where a raster is cut: the windows, the blending plan (dual and overlap) and the
    model's window side. Computed once per tile and handed to the tiling engine."""

    windows: list[Window]
    blend: BlendedPlan | None
    window: int
