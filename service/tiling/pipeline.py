"""One raster through one engine into row sinks: the tile pipeline every path runs
(``segment`` in-process, the gRPC servicer, the batch worker; the client writes what
it receives through the same sinks).

Rows leave the engine as soon as they are final; each block is thresholded once into
a 0/255 mask, given its validity (the raster's nodata), counted, and handed to every
sink: a GeoTIFF file, a mask plane for GeoTIFF bytes and polygons, gRPC row messages.
An output format is a sink (:mod:`service.outputs.sinks`), nothing more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.tiling.engine import ArraySource, RasterSource, TilingEngine
from service.tiling.resample import BackToRaster, Resolution, resample_image
from service.tiling.stages import Stages


def to_mask(prob: np.ndarray, threshold: float) -> np.ndarray:
    # bool -> uint8 x 255 in place: no int64 temporary (a 5000^2 tile's was 200 MB).
    return np.multiply(prob >= threshold, 255, dtype=np.uint8)


def to_prob_u8(prob: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


@dataclass
class RowBlock:
    """Final rows ``r0 .. r0 + len(mask)`` of a tile: the mask (0/255), the probabilities
    (float32, or only their 0-255 form where that is all there is, as in a client), and
    which pixels are valid (None: all)."""

    r0: int
    mask: np.ndarray
    probabilities: np.ndarray | None = None
    valid: np.ndarray | None = None
    _u8: np.ndarray | None = field(default=None, repr=False)

    @property
    def r1(self) -> int:
        return self.r0 + self.mask.shape[0]

    @property
    def probabilities_u8(self) -> np.ndarray:
        if self._u8 is None:
            assert self.probabilities is not None, "a block without probabilities"
            self._u8 = to_prob_u8(self.probabilities)
        return self._u8


class RowSink(Protocol):
    """Where rows go: called once per block, top to bottom, then closed."""

    def write(self, block: RowBlock) -> None: ...

    def close(self) -> None: ...


class TileRun:
    """One tile: brought to its model's ground resolution (``raster_m``: metres per pixel
    along x and y, None where unknown: served as it is), planned (first, so bad windows
    fail before any work), its rows back on the raster's grid and fed to the sinks, and
    what the tile's summary says."""

    def __init__(
        self,
        engine: TilingEngine,
        source: RasterSource,
        sinks: list[RowSink],
        threshold: float | None = None,
        raster_m: tuple[float, float] | None = None,
        stages: Stages | None = None,
    ) -> None:
        self.started = time.perf_counter()
        self.stages = stages if stages is not None else Stages()  # where the tile's time goes
        self.engine, self.source, self.sinks = engine, source, list(sinks)
        # None: the model version's own threshold (its manifest's, chosen on held-out data).
        self.threshold = engine.model.threshold if threshold is None else threshold
        self.raster_m = raster_m
        self.resolution = Resolution(raster_m, engine.model.resolution_m) if raster_m else None
        shape = self.resolution.model_shape(source.height, source.width) if self.resolution else (source.height, source.width)
        self.model_shape = shape
        self.plan = engine.plan(*shape)  # bad windows fail here, before any work
        self.model_source: RasterSource = source
        self.back: BackToRaster | None = None
        if shape != (source.height, source.width):
            # The model sees the raster at its own resolution; rows come back to the raster's grid.
            with self.stages("resample"):
                self.model_source = ArraySource(resample_image(source.read_full(), shape))
                self.back = BackToRaster((source.height, source.width), shape)
        self.building = 0

    @property
    def factor(self) -> float:
        """Model pixels per raster pixel (1.0: served as it is)."""
        return self.model_shape[0] / self.source.height

    @property
    def ground_m(self) -> float:
        """The raster's metres per pixel (the mean of x and y; 0.0: unknown)."""
        return sum(self.raster_m) / 2 if self.raster_m else 0.0

    def feed(self, r0: int, r1: int, prob: np.ndarray) -> RowBlock | None:
        """One block of final rows on the model's grid: brought back to the raster's (where
        resampled), thresholded, counted and handed to every sink."""
        with self.stages("encode"):
            return self._feed(r0, r1, prob)

    def _feed(self, r0: int, r1: int, prob: np.ndarray) -> RowBlock | None:
        if self.back is not None:
            back = self.back.feed(r0, prob)
            if back is None:
                return None
            r0, prob = back
            r1 = r0 + len(prob)
        valid = self.source.valid_rows(r0, r1)
        if valid is not None and self.back is not None:
            prob[~valid] = 0.0
        block = RowBlock(r0, to_mask(prob, self.threshold), prob, valid)
        self.building += int(np.count_nonzero(block.mask))
        for sink in self.sinks:
            sink.write(block)
        return block

    def run(self, progress: bool = False) -> TileRun:
        """The whole tile in this thread (``segment``, the batch worker), sinks closed after."""
        try:
            for r0, r1, prob in self.engine.run(self.model_source, progress=progress, plan=self.plan, stages=self.stages):
                self.feed(r0, r1, prob)
        finally:
            self.close()
        return self

    def close(self) -> None:
        with self.stages("encode"):  # a GeoTIFF sink becomes its COG here
            for sink in self.sinks:
                sink.close()

    @property
    def building_share(self) -> float:
        return self.building / (self.source.height * self.source.width)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started
