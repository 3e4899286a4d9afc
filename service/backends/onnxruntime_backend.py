"""ONNX Runtime on the CPU: the service's default backend."""

from __future__ import annotations

import numpy as np

from ..store import ModelEntry
from .base import estimate_window_bytes, model_inputs


class OnnxRuntimeBackend:
    """Runs ``model.onnx`` of a store entry (sha256-checked) with all graph optimisations."""

    def __init__(self, entry: ModelEntry, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(entry.verify("model.onnx")), options, providers=["CPUExecutionProvider"])
        self.entry = entry
        self.name = f"{entry.name}/{entry.version}"
        self.mode = entry.mode
        self.device = "cpu"
        self.geometry = entry.geometry()
        self._inputs = [i["name"] for i in entry.manifest["inputs"]]
        self._output = entry.manifest["outputs"][0]["name"]
        self._window_bytes: dict[int, int] = {}

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        feed = dict(zip(self._inputs, model_inputs(inputs)))
        return self.session.run([self._output], feed)[0][:, 0]

    def window_bytes(self, window: int) -> int:
        """The network's activation bound; ONNX Runtime's peak at 2636 px (11 GB,
        shared/perf-notes.md) sits at this bound, above eager PyTorch's (7.6 GB)."""
        if window not in self._window_bytes:
            self._window_bytes[window] = estimate_window_bytes(self.entry.manifest, window)
        return self._window_bytes[window]

    def close(self) -> None:
        self.session = None
