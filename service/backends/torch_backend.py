"""In-process PyTorch backend (CPU or CUDA)."""

from __future__ import annotations

import numpy as np
import torch

from training.networks.cost import window_bytes

from .base import model_inputs
from training.networks.model import SegmentationModel, load_checkpoint


class TorchBackend:
    """Runs a :class:`SegmentationModel` eagerly, channels_last (2-4x faster on CPU
    convolutions than NCHW, shared/perf-notes.md)."""

    def __init__(self, model: SegmentationModel, device: str | None = None, name: str = "torch") -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self.mode = model.mode
        self.geometry = model.geometry  # valid-size rules of a large-window network
        self.name = name

    @classmethod
    def from_checkpoint(cls, path, device: str | None = None) -> "TorchBackend":
        model, _ = load_checkpoint(path)
        return cls(model, device, name=str(path))

    @torch.inference_mode()
    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        xs = [torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last) for x in model_inputs(inputs)]
        return self.model(*xs)[:, 0].float().cpu().numpy()

    def window_bytes(self, window: int) -> int:
        n_inputs = 2 if self.mode == "dual" else 1
        return window_bytes(self.model, ((1, 3, window, window),) * n_inputs)

    def close(self) -> None:
        self.model = None
