"""ONNX Runtime: on the CPU, and on CUDA where onnxruntime-gpu is installed."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.engines.base import Bundle, Engine, model_inputs
from service.errors import InputError
from service.machine import available_cores
from service.store.manifest import ONNX


class OnnxRuntimeEngine(Engine):
    """Runs ``model.onnx`` of a store version (sha256-checked) with all graph optimisations."""

    engine = "onnxruntime"

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            # The CUDA provider is in onnxruntime-gpu's build only (the GPU image's).
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise InputError(f"this ONNX Runtime ({ort.__version__}) has no CUDA provider; install onnxruntime-gpu")
            providers.insert(0, "CUDAExecutionProvider")
        super().__init__(**Engine.describe(bundle, "cuda" if device.startswith("cuda") else "cpu"))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime would start a thread per core of the host, not of the container.
        options.intra_op_num_threads = threads or available_cores()
        # The network's activation bound is the manifest's: ONNX Runtime's peak at 2636 px
        # (11 GB, shared/perf-notes.md) sits at it, above eager PyTorch's.
        self.session: Any = ort.InferenceSession(str(bundle.verify(ONNX)), options, providers=providers)
        self._inputs, self._output = list(bundle.manifest.inputs), bundle.manifest.output

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
