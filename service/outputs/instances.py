"""Touching buildings apart: a seeded watershed on the building probability.

A mask's 8-connected components merge houses that share a wall or stand less than a
pixel apart, and a tasking manager then counts one building where there are three.
The probability tells them apart where the mask cannot: the network is sure in the
middle of each roof and less sure along the wall or gap between two. So each
building's seed is a confident core (probability at least ``SEED_PROBABILITY``, at
least ``SEED_DEPTH_M`` in from the mask's edge, at least ``MIN_SEED_M2``), and the
mask is flooded from the seeds down the probability (scikit-image's ``watershed``): the
split between two seeds runs along the probability's valley. A component with no seed (a small or faint building) stays
whole, and no pixel changes class: the instances cover exactly the mask, so pixel IoU
cannot move.

scipy's ``watershed_ift`` was declined: on a plateau of equal cost (a roof the network
is equally sure of everywhere) the last seed takes every pixel it reaches, across the
valley; scikit-image's priority flood grows seeds evenly there.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

SEED_PROBABILITY = 0.75  # a confident roof, well above the 0.5 that makes a building pixel
SEED_DEPTH_M = 2.0  # a seed lies at least this far inside the mask: a house is >= 4 m wide
MIN_SEED_M2 = 1.0  # smaller cores are texture on one roof, not a building of their own
_EIGHT = np.ones((3, 3), bool)


def separate(
    mask: np.ndarray,
    probability: np.ndarray,
    gsd_m: float,
    seed_probability: float = SEED_PROBABILITY,
    seed_depth_m: float = SEED_DEPTH_M,
) -> tuple[np.ndarray, int]:
    """Building instances of ``mask`` (non-zero is building) on its grid: a label
    image (0 outside, 1..n) and n. ``probability`` is the building probability on the
    same grid, float 0-1 or uint8 0-255; ``gsd_m`` the grid's metres per pixel."""
    if mask.shape != probability.shape:
        raise ValueError(f"mask shape {mask.shape} != probability shape {probability.shape}")
    inside = mask != 0
    if not inside.any():  # labelling an empty 5000^2 tile would still take 0.1 s
        return np.zeros(mask.shape, np.int32), 0
    components, n_comp = ndimage.label(inside, structure=_EIGHT)  # int32: relabelled in place below
    p8 = probability if probability.dtype == np.uint8 else np.clip(np.rint(probability * 255), 0, 255).astype(np.uint8)
    cores = inside & (p8 >= round(seed_probability * 255))
    depth_px = int(np.ceil(seed_depth_m / gsd_m))
    if depth_px > 1:  # at least depth_px pixels from the edge in every direction (chessboard)
        cores &= ndimage.binary_erosion(inside, structure=_EIGHT, iterations=depth_px - 1, border_value=1)
    seeds, n_seeds = ndimage.label(cores, structure=_EIGHT)
    if not n_seeds:
        return components, n_comp
    # Seeds under the minimum area do not count; a component with two seeds or more is
    # flooded from them, alone, within its bounding box (a tile's components are small:
    # no full-tile pass per component).
    big = np.bincount(seeds.ravel(), minlength=n_seeds + 1) >= max(1.0, MIN_SEED_M2 / gsd_m**2)
    big[0] = False
    owner = np.zeros(n_seeds + 1, np.int64)
    where = seeds > 0
    owner[seeds[where]] = components[where]  # every pixel of a seed lies in one component
    per_component = np.bincount(owner[big], minlength=n_comp + 1)
    boxes = ndimage.find_objects(components)
    following = n_comp
    split = np.flatnonzero(per_component[1:] >= 2) + 1
    for c in split:
        box = boxes[c - 1]
        mine = components[box] == c
        local = seeds[box]
        markers = np.where(mine & big[local], local, 0)
        flooded = watershed(255 - p8[box], markers, mask=mine, connectivity=2)
        ids, rank = np.unique(flooded[mine], return_inverse=True)
        components[box][mine] = following + 1 + rank.astype(np.int32)
        following += len(ids)
    if following == n_comp:
        return components, n_comp
    # Number the instances 1..n: a split component's id is gone (its pixels all went
    # to its new instances, each of which has pixels), every other id remains.
    present = np.ones(following + 1, bool)
    present[0] = False
    present[split] = False
    relabel = np.cumsum(present, dtype=np.int32) * present
    return relabel[components], int(present.sum())
