"""Inference backends: each turns a batch of window inputs into building probabilities."""

from __future__ import annotations

from ..errors import InputError
from ..store import ModelEntry
from .base import Backend

BACKENDS = ("auto", "onnxruntime", "openvino", "torch", "tensorrt")


def open_backend(entry: ModelEntry, kind: str = "onnxruntime", device: str | None = None, precision: str = "auto") -> Backend:
    """Load a store entry with the named backend; ``auto``: the engine this machine's
    facts predict (:mod:`service.tuning`). ``precision`` (auto, fp32, bf16) matters to OpenVINO."""
    if kind == "auto":
        from ..gpu import why_no_gpu

        if why_no_gpu() is None and (device is None or device.startswith("cuda")):
            return _on_gpu(entry, precision)
        from ..tuning import cached_seconds, needs_measuring, predicted_engine

        choice = predicted_engine(entry, precision)
        backend = open_backend(entry, choice.engine, precision=choice.precision)
        if needs_measuring(entry):
            backend.window_seconds = cached_seconds(entry, backend.engine, backend.precision)
        return backend
    if kind == "tensorrt":
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend.from_entry(entry, "fp32" if precision == "fp32" else "fp16")
    if kind == "openvino":
        try:
            from .openvino_backend import OpenVinoBackend
        except ModuleNotFoundError as e:
            raise InputError(f"the openvino backend needs OpenVINO, which is not installed ({e})") from None
        return OpenVinoBackend(entry, precision)
    if precision == "bf16":
        raise InputError(f"the {kind} backend runs fp32 only; bf16 runs on --backend openvino")
    if kind == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(entry, device=device or "cpu")
    if kind == "torch":
        try:
            from .torch_backend import TorchBackend
        except ModuleNotFoundError as e:
            raise InputError(
                f"the torch backend needs PyTorch, which is not installed ({e}); use --backend onnxruntime"
            ) from None
        return TorchBackend.from_entry(entry, device)
    raise InputError(f"unknown backend '{kind}'; known: {', '.join(BACKENDS)}")


def _on_gpu(entry: ModelEntry, precision: str) -> Backend:
    """On a GPU: the TensorRT engine built for it where there is one (fp16 unless fp32
    is asked), else PyTorch on CUDA; the logs say which and why."""
    import logging

    try:
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend.from_entry(entry, "fp32" if precision == "fp32" else "fp16")
    except (ModuleNotFoundError, InputError) as e:
        logging.getLogger("footprints").warning(
            "%s v%d: no TensorRT engine here (%s); PyTorch on CUDA", entry.name, entry.version, e
        )
    from .torch_backend import TorchBackend

    return TorchBackend.from_entry(entry, "cuda")


__all__ = ["BACKENDS", "Backend", "open_backend"]
