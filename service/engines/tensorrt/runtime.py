"""TensorRT on an NVIDIA GPU: the engine built for this GPU and TensorRT version
(:mod:`service.engines.tensorrt`), one execution context per optimisation profile, each with
its own CUDA stream; device buffers are PyTorch CUDA tensors (PyTorch is already how
the service reaches CUDA, so no other CUDA binding is needed)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from service.engines.base import Bundle, Engine, model_inputs
from service.engines.gpu import require_gpu
from service.engines.tensorrt.files import pick_engine
from service.engines.tensorrt.profiles import Profile, pick
from service.errors import InputError
from service.store.repository import file_sha256
from service.store.triton import OUTPUT


class TensorRTEngine(Engine):
    engine = "tensorrt"

    def __init__(self, entry: Bundle, plan: Path, profiles: list[Profile], precision: str) -> None:
        require_gpu("the tensorrt backend")
        import tensorrt as trt
        import torch

        super().__init__(**Engine.describe(entry, "cuda", precision))
        self._torch = torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine: Any = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise InputError(f"{plan}: TensorRT could not load this engine (built for another GPU or TensorRT?)")
        self.profiles = profiles
        self._inputs = list(entry.geometry.input_names)
        self._contexts: list[tuple[Any, Any]] = []
        for i in range(len(profiles)):
            context = self._engine.create_execution_context()
            stream = torch.cuda.Stream()
            context.set_optimization_profile_async(i, stream.cuda_stream)
            self._contexts.append((context, stream))
        self._lock = threading.Lock()

    @classmethod
    def load(cls, entry: Bundle, precision: str = "fp16") -> TensorRTEngine:
        """The engine of ``entry`` built for this GPU and TensorRT (sha256-checked), or a
        refusal naming the engines there are."""
        gpu = require_gpu("the tensorrt backend")
        try:
            import tensorrt as trt
        except ModuleNotFoundError:
            raise InputError("the tensorrt backend needs TensorRT: pip install '.[gpu]'") from None
        record = pick_engine(
            dict(entry.manifest.tensorrt_engines), gpu.sm, trt.__version__, precision, f"{entry.name}:{entry.version}"
        )
        plan = entry.folder / record["file"]
        if not plan.is_file() or file_sha256(plan) != record["sha256"]:
            raise InputError(
                f"{plan}: missing, or its sha256 does not match the manifest; rebuild it with footprints build-engine"
            )
        profs = [Profile(p["name"], p["sides"][0], p["sides"][1], p["sides"][2], p["max_batch"]) for p in record["profiles"]]
        return cls(entry, plan, profs, precision)

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        torch = self._torch
        xs = model_inputs(inputs)
        batch, side = xs[0].shape[0], xs[0].shape[-1]
        context, stream = self._contexts[pick(self.profiles, side, batch)]
        with self._lock, torch.cuda.stream(stream):
            device_inputs = [torch.from_numpy(x).pin_memory().to("cuda", non_blocking=True) for x in xs]
            for name, t in zip(self._inputs, device_inputs):
                context.set_input_shape(name, tuple(t.shape))
                context.set_tensor_address(name, t.data_ptr())
            out = torch.empty(tuple(context.get_tensor_shape(OUTPUT)), dtype=torch.float32, device="cuda")
            context.set_tensor_address(OUTPUT, out.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed on {batch} window(s) of {side} px")
            result = out[:, 0].to("cpu", non_blocking=True)
            stream.synchronize()
        return result.numpy()

    def close(self) -> None:
        self._contexts.clear()
        self._engine = None
