"""What every engine is: a loaded model version that turns window crops into building
probabilities (``load`` is its constructor, then ``infer``, then ``close``), and what
it states about itself (name, device, geometry, engine, precision, window memory, the
ground resolution it was trained at and its decision threshold).

ONNX Runtime, OpenVINO, PyTorch and TensorRT are engines; so are the remote model
tier (:mod:`service.remote`) and TorchServe behind it, as far as the tiler can tell.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.tiling.geometry import Geometry


def model_inputs(crops: list[np.ndarray]) -> list[np.ndarray]:
    """Crops as read (uint8 ``(N, 3, n, n)``; for dual windows also the ``(N, 3, 2n, 2n)``
    context) -> the model's float32 inputs, the context averaged 2x2 down to ``n``.

    Every engine calls this, so a window gives the same numbers in-process and on
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


class Bundle(Protocol):
    """What an engine loads from: a store version (:class:`service.store.repository.ModelEntry`)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def folder(self) -> Path: ...

    @property
    def manifest(self) -> Any: ...

    @property
    def geometry(self) -> Geometry: ...

    def window_bytes(self, window: int) -> int: ...

    def verify(self, filename: str) -> Path: ...


class Engine:
    """The attributes every engine has, set in one place; subclasses load in their
    constructor and implement :meth:`infer`."""

    engine = "none"  # "onnxruntime", "openvino", "torch", "tensorrt", "remote ...": what ListModels reports

    def __init__(
        self,
        name: str,
        device: str,
        geometry: Geometry,
        window_bytes: Callable[[int], int],
        precision: str = "fp32",
        resolution_m: float = 0.3,
        threshold: float = 0.5,
    ) -> None:
        self.name, self.device, self.geometry, self.precision = name, device, geometry, precision
        self._window_bytes = window_bytes
        # Every path brings a raster to ``resolution_m`` before the model sees it, and
        # thresholds at ``threshold`` unless the request says otherwise.
        self.resolution_m, self.threshold = resolution_m, threshold

    @classmethod
    def describe(cls, bundle: Bundle, device: str, precision: str = "fp32") -> dict[str, Any]:
        """The constructor arguments of :class:`Engine` for a store version."""
        return {
            "name": f"{bundle.name}/{bundle.version}",
            "device": device,
            "geometry": bundle.geometry,
            "window_bytes": bundle.window_bytes,
            "precision": precision,
            "resolution_m": bundle.manifest.resolution_m,
            "threshold": bundle.manifest.threshold,
        }

    def window_bytes(self, window: int) -> int:
        """Memory one window of side ``window`` needs, known before running it."""
        return self._window_bytes(window)

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        """uint8 crops as read (``(N, 3, n, n)``, and the dual context) -> ``(N, h, w)`` float32."""
        raise NotImplementedError

    def close(self) -> None:
        pass
