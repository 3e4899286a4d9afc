"""The one small interface every backend implements (PyTorch, ONNX Runtime, TensorRT)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    """A loaded model. ``mode`` is ``"large"`` or ``"dual"``.

    ``infer`` takes one float32 array ``(N, 3, n, n)`` of raw RGB (0-255) per model
    input (one for large windows; full and context for dual) and returns the
    building probability ``(N, h, w)`` float32. Batching is the caller's business.
    """

    name: str
    mode: str
    device: str
    geometry: object | None  # ValidGeometry of a large-window network, None for dual

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray: ...

    def window_bytes(self, window: int) -> int:
        """Memory one window of input side ``window`` needs, known before running it."""
        ...

    def close(self) -> None: ...
