"""In-process PyTorch backend (CPU or CUDA).

Serving loads the program that ``footprints export`` wrote beside ``model.onnx``
(``model.pt2``, :func:`torch.export.save`): the graph and its weights, no Python
network classes. Training hands its live module to the same class, so its
validation runs exactly what the service runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from service.engines.base import Bundle, Engine, model_inputs
from service.machine import available_cores
from service.store.manifest import PROGRAM
from service.tiling.geometry import Geometry


class TorchEngine(Engine):
    """Runs a module that maps raw RGB windows to building probabilities, inputs
    channels_last (2-4x faster CPU convolutions than NCHW, shared/perf-notes.md).

    ``geometry`` and ``window_bytes`` default to the module's own (a training module
    states them); an exported program gets them from its manifest.
    """

    engine = "torch"

    def __init__(
        self,
        module: Any,
        device: str | None = None,
        name: str = "torch",
        geometry: Geometry | None = None,
        window_bytes: Callable[[int], int] | None = None,
        resolution_m: float | None = None,
        threshold: float = 0.5,
    ) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if resolution_m is None:  # a training module states its own
            resolution_m = float(getattr(module, "resolution_m", 0.3))
        super().__init__(
            name, device, geometry or module.geometry, window_bytes or module.window_bytes, "fp32", resolution_m, threshold
        )
        if isinstance(module, torch.nn.Module) and not isinstance(module, torch.fx.GraphModule):
            module = module.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.module = module.to(self.device)

    @classmethod
    def load(cls, bundle: Bundle, device: str | None = None) -> TorchEngine:
        """The store version's exported program (sha256-checked)."""
        # torch counts the host's cores, not the container's.
        torch.set_num_threads(min(torch.get_num_threads(), available_cores()))
        program = torch.export.load(str(bundle.verify(PROGRAM)))
        m = bundle.manifest
        return cls(
            program.module(), device, f"{bundle.name}/{bundle.version}", bundle.geometry, bundle.window_bytes,
            m.resolution_m, m.threshold,
        )  # fmt: skip

    @torch.inference_mode()
    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        xs = [torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last) for x in model_inputs(inputs)]
        out: np.ndarray = self.module(*xs)[:, 0].float().cpu().numpy()
        return out

    def close(self) -> None:
        self.module = None
