"""The null engine: every window answered with zeros at no cost. It measures what the
rest of a tile's path costs (upload, decode, window reads, stitching, encoding,
polygons) with the model taken out: ``benchmarks/frontend.py``, ``--backend null``."""

from __future__ import annotations

import numpy as np

from service.engines.base import Bundle, Engine


class NullEngine(Engine):
    engine = "null"

    def __init__(self, bundle: Bundle) -> None:
        super().__init__(**Engine.describe(bundle, "cpu"))
        self.out_side = self.geometry.output_side

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        n, side = inputs[0].shape[0], inputs[0].shape[-1]
        return np.zeros((n, self.out_side(side), self.out_side(side)), np.float32)
