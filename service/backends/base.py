"""The one small interface every backend implements (PyTorch, ONNX Runtime, TensorRT)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


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


def estimate_window_bytes(manifest: dict, window: int) -> int:
    """Memory bound of one window of a store model, from its manifest's network
    (a meta-device pass: no weights loaded, no memory touched)."""
    import torch

    from training.networks.cost import window_cost
    from training.networks.model import SegmentationModel

    with torch.device("meta"):
        model = SegmentationModel(manifest["network"], manifest["network_args"], manifest["mean_rgb"])
    shapes = ((1, 3, window, window),) * len(manifest["inputs"])
    return window_cost(model, shapes)["activation_bytes"]


class Backend(Protocol):
    """A loaded model. ``mode`` is ``"large"`` or ``"dual"``.

    ``infer`` takes the window crops as read, uint8 ``(N, 3, n, n)`` (and for dual
    windows the ``(N, 3, 2n, 2n)`` context crops), and returns the building
    probability ``(N, h, w)`` float32. Batching is the caller's business.
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
