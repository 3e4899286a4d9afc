"""Inference backends: each turns a batch of window inputs into building probabilities."""

from __future__ import annotations

from ..errors import InputError
from ..store import ModelEntry
from .base import Backend

BACKENDS = ("onnxruntime", "torch")  # TensorRT joins on GPU machines (a later issue)


def open_backend(entry: ModelEntry, kind: str = "onnxruntime", device: str | None = None) -> Backend:
    """Load a store entry with the named backend (ONNX Runtime on the CPU by default)."""
    if kind == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(entry)
    if kind == "torch":
        from .torch_backend import TorchBackend

        backend = TorchBackend.from_checkpoint(entry.verify("model.pt"), device)
        backend.name = f"{entry.name}/{entry.version}"
        return backend
    raise InputError(f"unknown backend '{kind}'; known: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "open_backend"]
