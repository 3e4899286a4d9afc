"""The tiling engine: plan windows, read them, run them in batches, stitch, stream rows.

Used in-process by ``footprints segment`` and by the gRPC service alike. Memory
is bounded: windows are read, run and stitched as a stream; the only full-size
buffer is one float32 probability plane, and no more windows are in flight than
the memory budget allows (each window's need is known before it runs: the
manifest records it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from tqdm import tqdm

from service.errors import InputError
from service.machine import half_the_ram
from service.tiling.geometry import DUAL_OVERLAP, Geometry
from service.tiling.plans import TilePlan, Window
from service.tiling.stages import Stages
from service.tiling.stitch import Stitcher


class WindowModel(Protocol):
    """What the engine runs windows on (every engine, the server's batcher, a remote
    model tier): uint8 crops in, probabilities ``(N, h, w)`` out."""

    geometry: Geometry
    device: str
    resolution_m: float  # metres per pixel it was trained at
    threshold: float  # its decision threshold

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray: ...

    def window_bytes(self, window: int) -> int: ...


class RasterSource(Protocol):
    """What the engine reads: :class:`service.geoio.RGBRaster`, or an in-memory array."""

    height: int
    width: int

    def read(self, row: int, col: int, size: int) -> np.ndarray: ...

    def read_full(self) -> np.ndarray: ...

    def valid_rows(self, r0: int, r1: int) -> np.ndarray | None: ...


class ArraySource:
    """An in-memory ``(3, h, w)`` uint8 RGB array as a :class:`RasterSource`."""

    def __init__(self, rgb: np.ndarray, valid: np.ndarray | None = None) -> None:
        if rgb.ndim != 3 or rgb.shape[0] != 3 or rgb.dtype != np.uint8:
            raise InputError(f"expected a (3, h, w) uint8 RGB array, got {rgb.shape} {rgb.dtype}")
        self.rgb, self.valid = rgb, valid
        self.height, self.width = rgb.shape[1:]

    def read(self, row: int, col: int, size: int) -> np.ndarray:
        from service.rasters import mirror_indices

        rows = mirror_indices(row, size, self.height)
        cols = mirror_indices(col, size, self.width)
        return self.rgb[:, rows[:, None], cols[None, :]]

    def read_full(self) -> np.ndarray:
        return self.rgb

    def valid_rows(self, r0: int, r1: int) -> np.ndarray | None:
        return None if self.valid is None else self.valid[r0:r1]


# The symmetries a TTA of n passes averages: the first n of this order, so that every
# choice is a group (each pass's inverse is in it, and no direction is favoured): 2 = the
# half turn, 4 = the quarter turns, 8 = those and their mirror images. On effnet v3's
# held-out runs 4 passes kept 88-90 % of the 8 passes' gain (docs/models.md).
TTA_ORDER = (0, 2, 1, 3, 4, 6, 5, 7)
TTA_CHOICES = (2, 4, 8)
TTA_DEFAULT_PASSES = 8  # TTA asked for without a count: every symmetry


def tta_setting(tta: bool | None, passes: int | None) -> bool | None:
    """Whether a request asks for TTA (None: the model's default): passes alone ask for
    it; passes outside :data:`TTA_CHOICES`, or with TTA turned off, are refused."""
    if passes is None:
        return tta
    if passes not in TTA_CHOICES:
        raise InputError(f"tta_passes must be one of {', '.join(map(str, TTA_CHOICES))}, got {passes}")
    if tta is False:
        raise InputError(f"tta_passes {passes} given with TTA turned off; leave one of them out")
    return True


@dataclass
class EngineConfig:
    """How to tile. ``window``: input side for large windows (None: the model's default),
    output side for dual ones. ``window_seconds``: seconds per window by side measured on
    this machine (:mod:`service.engines.timings`), which valid-convolution plans follow."""

    window: int | None = None
    fit_window: bool = True
    batch_size: int = 1
    memory_budget_bytes: int | None = None
    tta: bool | None = None  # None: the model's own setting (its geometry's)
    # Passes a TTA averages (2, 4 or 8; None: TTA_DEFAULT_PASSES). Setting it asks for TTA.
    tta_passes: int | None = None
    dual_overlap: int = DUAL_OVERLAP
    window_seconds: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tta = tta_setting(self.tta, self.tta_passes)


def dihedral(x: np.ndarray, t: int) -> np.ndarray:
    """The ``t``-th of the 8 symmetries of the square on the last two axes."""
    if t >= 4:
        x = x[..., ::-1]
    return np.rot90(x, t % 4, axes=(-2, -1))


def undo_dihedral(x: np.ndarray, t: int) -> np.ndarray:
    x = np.rot90(x, -(t % 4), axes=(-2, -1))
    return x[..., ::-1] if t >= 4 else x


def windows_that_fit(need: int, budget: int, window: int) -> int:
    """How many windows of ``need`` bytes a budget holds, at least one; a window larger
    than the whole budget is refused (the one place that rule lives)."""
    if need > budget:
        raise InputError(
            f"one {window}-px window needs about {need / 2**30:.1f} GiB, more than the memory "
            f"budget of {budget / 2**30:.1f} GiB; use a smaller window"
        )
    return max(1, budget // max(1, need))


class TilingEngine:
    """Segments rasters with one model under one :class:`EngineConfig`."""

    def __init__(self, model: WindowModel, config: EngineConfig | None = None) -> None:
        self.model = model
        self.config = config or EngineConfig()

    # ---- planning -----------------------------------------------------------
    def plan(self, height: int, width: int) -> TilePlan:
        """Windows for a raster, the blending plan (dual and overlap) and the model input side.

        Blended models (overlap, dual) get their manifest's plan window, fitted to the
        raster: a pure function of the model version and the raster's size, so every
        path and machine gives one mask. Valid-convolution models, whose windows stitch
        exactly whatever their size, get the fastest plan the memory budget allows when
        seconds per window size were measured here."""
        cfg, geometry = self.config, self.model.geometry
        if cfg.window is None and cfg.fit_window and cfg.window_seconds and not geometry.plan_fixed:
            return self._fastest_plan(height, width, cfg.window_seconds)
        window = cfg.window or geometry.default_window(self.model.device)
        return geometry.plan(height, width, window, cfg.fit_window, cfg.dual_overlap)

    def _fastest_plan(self, height: int, width: int, seconds: dict[int, float]) -> TilePlan:
        """Of the plans with 1, 2, 3... windows along the longer side, the one whose
        windows take the least predicted time (seconds per window interpolated over the
        window's area between measured sizes) and fit the memory budget.

        Why measured: bigger windows waste less on overlaps and margins but run fewer
        pixels per second once their activations leave the caches; where the two meet
        depends on the model and the CPU (shared/perf-notes.md)."""
        geometry, cfg = self.model.geometry, self.config
        budget = cfg.memory_budget_bytes or half_the_ram()
        sides = sorted(seconds)
        areas = np.array([s * s for s in sides], np.float64)
        times = np.array([seconds[s] for s in sides], np.float64)

        def predicted(side: int) -> float:
            a = float(side * side)
            if a <= areas[-1]:
                return float(np.interp(a, areas, times, left=times[0] * a / areas[0]))
            return float(times[-1] * a / areas[-1])  # beyond the largest measured: its rate per pixel

        longest = max(height, width)
        best: tuple[float, TilePlan] | None = None
        tried: set[int] = set()
        for n in range(1, 65):
            window = geometry.window_for_count(longest, n, cfg.dual_overlap)
            if window in tried or self.model.window_bytes(window) > budget:
                continue
            tried.add(window)
            try:
                plan = geometry.plan(height, width, window, True, cfg.dual_overlap)
            except InputError:
                continue
            cost = len(plan.windows) * predicted(plan.window)
            if best is None or cost < best[0]:
                best = (cost, plan)
            if window <= sides[0]:
                break  # smaller than anything measured: only more overhead from here
        if best is None:
            return geometry.plan(height, width, geometry.default_window(self.model.device), True, cfg.dual_overlap)
        return best[1]

    @property
    def tta_passes(self) -> int:
        """Passes averaged per window: 1 without TTA (what a tile summary reports)."""
        tta = self.model.geometry.tta if self.config.tta is None else self.config.tta
        return (self.config.tta_passes or TTA_DEFAULT_PASSES) if tta else 1

    def windows_in_flight(self, window: int) -> int:
        """How many windows may run at once under the memory budget (at least 1, or an error)."""
        budget = self.config.memory_budget_bytes or half_the_ram()
        return min(self.config.batch_size, windows_that_fit(self.model.window_bytes(window), budget, window))

    # ---- running ------------------------------------------------------------
    def _submit(self, inputs: list[np.ndarray], in_flight: int) -> Callable[[], np.ndarray]:
        """Start a batch (in chunks of ``in_flight``, and its other dihedral passes under
        TTA); the returned call gives its probabilities, averaged over TTA. Backends that
        queue (``submit``: the server's shared batcher) run it meanwhile; the others have
        run it already."""
        submit = getattr(self.model, "submit", None)

        def start(xs: list[np.ndarray]) -> Callable[[], np.ndarray]:
            chunks = [[np.ascontiguousarray(x[i : i + in_flight]) for x in xs] for i in range(0, len(xs[0]), in_flight)]
            if submit is None:
                done = np.concatenate([self.model.infer(c) for c in chunks])
                return lambda: done
            waits = [submit(c) for c in chunks]
            return lambda: np.concatenate([w() for w in waits])

        if self.tta_passes == 1:
            return start(inputs)
        turns = sorted(TTA_ORDER[: self.tta_passes])  # summed in one order for every choice
        passes = [(t, start([dihedral(x, t) for x in inputs] if t else inputs)) for t in turns]

        def averaged() -> np.ndarray:
            total = undo_dihedral(passes[0][1](), 0)
            for t, done in passes[1:]:
                total = total + undo_dihedral(done(), t)
            return total / len(passes)

        return averaged

    def _read(self, source: RasterSource, win: Window) -> list[np.ndarray]:
        """The window's crops as read (uint8): what backends, local or remote, take."""
        return [source.read(row, col, size) for row, col, size in win.reads]

    def run(
        self, source: RasterSource, progress: bool = False, plan: TilePlan | None = None, stages: Stages | None = None
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(r0, r1, probabilities)`` row blocks, top to bottom, as they finish.

        ``plan``: the tile's plan when the caller made it already (the server does,
        to refuse bad windows before any work). Invalid (nodata) pixels come out
        with probability 0. ``stages`` receives the time waited on window reads, on
        the model and spent stitching.
        """
        stages = stages if stages is not None else Stages()
        windows, blend, window = plan or self.plan(source.height, source.width)
        in_flight = self.windows_in_flight(window)
        stitcher = Stitcher(source.height, source.width, windows, blend)
        bar = tqdm(total=len(windows), desc="windows", unit="win", disable=not progress)
        batches = [windows[i : i + in_flight] for i in range(0, len(windows), in_flight)]

        def read(batch: list[Window]) -> list[np.ndarray]:
            reads = [self._read(source, w) for w in batch]
            return [np.stack([r[k] for r in reads]) for k in range(len(reads[0]))]

        # The next batch is read (and decoded) while this one runs: the engines release
        # the GIL, so the reader takes only the time the model leaves idle. A queueing
        # backend gets the next batch before this one is waited for.
        depth = 2 if hasattr(self.model, "submit") else 1
        reader = ThreadPoolExecutor(1, thread_name_prefix="window-reader")
        running: deque[tuple[list[Window], Callable[[], np.ndarray]]] = deque()
        try:
            upcoming = reader.submit(read, batches[0]) if batches else None
            for i, batch in enumerate(batches):
                assert upcoming is not None
                with stages("window reads"):
                    inputs = upcoming.result()
                upcoming = reader.submit(read, batches[i + 1]) if i + 1 < len(batches) else None
                with stages("model"):  # engines without a queue run the batch here
                    running.append((batch, self._submit(inputs, in_flight)))
                while running and (len(running) >= depth or i + 1 == len(batches)):
                    done, wait = running.popleft()
                    with stages("model"):
                        probs = wait()
                    with stages("stitch"):
                        for w, p in zip(done, probs):
                            stitcher.add(w, p)
                        bar.update(len(done))
                        ready = stitcher.take_ready()
                    while ready is not None:
                        with stages("stitch"):
                            block = self._masked(source, *ready)
                        yield block
                        with stages("stitch"):
                            ready = stitcher.take_ready()
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
            bar.close()

    @staticmethod
    def _masked(source: RasterSource, r0: int, r1: int, rows: np.ndarray) -> tuple[int, int, np.ndarray]:
        valid = source.valid_rows(r0, r1)
        if valid is not None:
            rows[~valid] = 0.0
        return r0, r1, rows

    def probabilities(self, source: RasterSource, progress: bool = False) -> np.ndarray:
        """The whole probability plane (for tests and small rasters)."""
        out = np.zeros((source.height, source.width), np.float32)
        for r0, r1, rows in self.run(source, progress):
            out[r0:r1] = rows
        return out
