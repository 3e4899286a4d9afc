"""ONNX Runtime: on the CPU, and on CUDA where onnxruntime-gpu is installed."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cpu import available_cores
from ..errors import InputError
from ..store import ONNX, ModelEntry
from .base import model_inputs


class OnnxRuntimeBackend:
    """Runs ``model.onnx`` of a store entry (sha256-checked) with all graph optimisations."""

    def __init__(self, entry: ModelEntry, threads: int | None = None, device: str = "cpu") -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            # The CUDA provider is in onnxruntime-gpu's build only (the GPU image's).
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise InputError(f"this ONNX Runtime ({ort.__version__}) has no CUDA provider; install onnxruntime-gpu")
            providers.insert(0, "CUDAExecutionProvider")

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime would start a thread per core of the host, not of the container.
        options.intra_op_num_threads = threads or available_cores()
        self.session: Any = ort.InferenceSession(str(entry.verify(ONNX)), options, providers=providers)
        self.name = f"{entry.name}/{entry.version}"
        self.device = "cuda" if device.startswith("cuda") else "cpu"
        self.engine, self.precision = "onnxruntime", "fp32"
        self.window_seconds: dict[int, float] | None = None
        self.spec = entry.spec
        # The network's activation bound, recorded at export. ONNX Runtime's peak at
        # 2636 px (11 GB, shared/perf-notes.md) sits at this bound, above eager PyTorch's.
        self.window_bytes = entry.memory.bytes
        self._inputs = [i["name"] for i in entry.manifest["inputs"]]
        self._output = entry.manifest["outputs"][0]["name"]

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        xs = model_inputs(inputs)
        if self.device != "cpu":
            out: np.ndarray = self.session.run([self._output], dict(zip(self._inputs, xs)))[0]
            return out[:, 0]
        # One window per run on the CPU, as OpenVINO does: a window's numbers never
        # depend on the batch it shared (and a CPU gains nothing from batches here).
        runs = [
            self.session.run([self._output], {n: x[i : i + 1] for n, x in zip(self._inputs, xs)})[0] for i in range(len(xs[0]))
        ]
        return np.concatenate(runs)[:, 0]

    def close(self) -> None:
        self.session = None
