"""Inference backends: each turns a batch of window inputs into building probabilities."""

from __future__ import annotations

from ..errors import InputError
from ..store import ModelEntry
from .base import Backend

BACKENDS = ("onnxruntime", "torch")  # TensorRT and OpenVINO join in later issues


def open_backend(entry: ModelEntry, kind: str = "onnxruntime", device: str | None = None) -> Backend:
    """Load a store entry with the named backend (ONNX Runtime on the CPU by default)."""
    if kind == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(entry)
    if kind == "torch":
        try:
            from .torch_backend import TorchBackend
        except ModuleNotFoundError as e:
            raise InputError(
                f"the torch backend needs PyTorch, which is not installed ({e}); use --backend onnxruntime"
            ) from None
        return TorchBackend.from_entry(entry, device)
    raise InputError(f"unknown backend '{kind}'; known: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "open_backend"]
