"""Stitching on its own (service/tiling/stitch.py): exact placement, blended normalisation,
and rows released in order as soon as no window still has to write them."""

from __future__ import annotations

import numpy as np

from service.tiling.plans import DualWindowPlan, LargeWindowPlan
from service.tiling.stitch import Stitcher


def test_large_windows_are_placed_exactly_and_rows_released_as_they_finish():
    plan = LargeWindowPlan(124 + 16 * 8, 92, 16)  # 68... output side 68
    windows = plan.windows(150, 100)
    stitcher = Stitcher(150, 100, windows)
    truth = np.random.default_rng(0).random((150, 100)).astype(np.float32)
    released = []
    for w in windows:
        r0, r1, c0, c1 = w.keep
        out = np.zeros((plan.out, plan.out), np.float32)
        out[: r1 - w.out_row, : c1 - w.out_col] = truth[w.out_row : r1, w.out_col : c1]
        stitcher.add(w, out)
        while (ready := stitcher.take_ready()) is not None:
            released.append(ready)
    starts = [r0 for r0, _, _ in released]
    assert starts == sorted(starts) and released[0][0] == 0 and released[-1][1] == 150
    assert len(released) > 1  # rows left before the last windows arrived
    assert np.array_equal(np.concatenate([rows for _, _, rows in released]), truth)
    assert stitcher.take_ready() is None


def test_blended_windows_normalise_to_the_signal_where_they_agree():
    plan = DualWindowPlan(64, 16, 16)
    windows = plan.windows(150, 130)
    stitcher = Stitcher(150, 130, windows, plan)
    for w in windows:
        stitcher.add(w, np.full((64, 64), 0.7, np.float32))  # every window says 0.7
    r0, r1, rows = stitcher.take_ready()
    assert (r0, r1) == (0, 150) and np.allclose(rows, 0.7, atol=1e-6)
