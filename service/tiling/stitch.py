"""Stitching window outputs into one probability plane, releasing rows as they finish.

One float32 plane of the raster's size is the only full-size buffer. Each row
knows how many planned windows still have to write it; once the rows from the
top down have none pending they are final and can be streamed out (to a GeoTIFF,
or to a gRPC client) while the windows below are still running.
"""

from __future__ import annotations

import numpy as np

from service.tiling.plans import BlendedPlan, Window, ramp


class Stitcher:
    """Exact placement (large windows) or ramp-weighted blending (dual and overlap windows)."""

    def __init__(self, height: int, width: int, windows: list[Window], blend: BlendedPlan | None = None) -> None:
        self.height, self.width = height, width
        self.plane = np.zeros((height, width), np.float32)
        self.pending = np.zeros(height, np.int32)
        for w in windows:
            self.pending[w.keep[0] : w.keep[1]] += 1
        self.emitted = 0
        self.blend = blend
        if blend is not None:
            self.ramp = ramp(blend.window, blend.overlap)
            self.row_sum, self.col_sum = blend.weight_sums(height, width)

    def add(self, win: Window, prob: np.ndarray) -> None:
        """Place one window's ``(out, out)`` probabilities."""
        r0, r1, c0, c1 = win.keep
        if win.crop:  # same-padding windows: the border saw padding, not image
            prob = prob[win.crop : prob.shape[0] - win.crop, win.crop : prob.shape[1] - win.crop]
        wr0, wc0 = r0 - win.out_row, c0 - win.out_col
        part = prob[wr0 : wr0 + r1 - r0, wc0 : wc0 + c1 - c0]
        if self.blend is None:
            self.plane[r0:r1, c0:c1] = part
        else:
            weight = np.outer(self.ramp[wr0 : wr0 + r1 - r0], self.ramp[wc0 : wc0 + c1 - c0])
            self.plane[r0:r1, c0:c1] += part * weight
        self.pending[r0:r1] -= 1

    def take_ready(self) -> tuple[int, int, np.ndarray] | None:
        """The next block of final rows ``(r0, r1, probabilities)``, or None."""
        busy = np.flatnonzero(self.pending[self.emitted :])
        stop = self.emitted + int(busy[0]) if busy.size else self.height
        if stop == self.emitted:
            return None
        r0, self.emitted = self.emitted, stop
        rows = self.plane[r0:stop]
        if self.blend is not None:
            rows /= self.row_sum[r0:stop, None]
            rows /= self.col_sum[None, :]
        return r0, stop, rows
