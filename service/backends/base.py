"""The one small interface every backend implements (ONNX Runtime, PyTorch, remote
model servers; TensorRT and OpenVINO join behind it)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..geometry import WindowSpec


def model_inputs(crops: list[np.ndarray]) -> list[np.ndarray]:
    """Crops as read (uint8 ``(N, 3, n, n)``; for dual windows also the ``(N, 3, 2n, 2n)``
    context) -> the model's float32 inputs, the context averaged 2x2 down to ``n``.

    Every backend calls this, so a window gives the same numbers in-process and on
    a remote model server (which receives the uint8 crops).
    """
    out = []
    for x in crops:
        x = x.astype(np.float32)
        if x.shape[-1] != crops[0].shape[-1]:
            n, c, h, w = x.shape
            x = x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
        out.append(x)
    return out


class Backend(Protocol):
    """A loaded model. ``spec`` says how it is cut into windows (from its manifest).

    ``infer`` takes the window crops as read, uint8 ``(N, 3, n, n)`` (and for dual
    windows the ``(N, 3, 2n, 2n)`` context crops), and returns the building
    probability ``(N, h, w)`` float32. Batching is the caller's business.
    """

    name: str
    device: str
    spec: WindowSpec
    engine: str  # "onnxruntime", "openvino", "torch", "remote": what ListModels and tile summaries report
    precision: str  # "fp32" or "bf16"
    # Measured seconds per window by side on this machine (service.tuning), which the
    # tiler cuts tiles by; None: the model's default window.
    window_seconds: dict[int, float] | None

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray: ...

    def window_bytes(self, window: int) -> int:
        """Memory one window of side ``window`` needs, known before running it."""
        ...

    def close(self) -> None: ...
