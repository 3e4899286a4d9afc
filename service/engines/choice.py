"""Which engine serves a model here: predicted from facts, never measured on the
critical path.

On a GPU: the TensorRT engine built for it where the manifest records one, else PyTorch
on CUDA. On a CPU: OpenVINO (bf16 where the CPU computes bf16 natively and the model's
bf16 masks passed export's agreement check, fp32 elsewhere), except for graphs with
scatter operations (ONERA's index unpooling), which OpenVINO's CPU plugin runs about
7x slower than ONNX Runtime (measured, ``benchmarks/engines.py``); without OpenVINO,
ONNX Runtime. The same facts give the same engine in every process, so a tile gets the
same mask from ``segment``, ``serve`` and ``batch``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from service.engines.base import Bundle
from service.errors import InputError

# OpenVINO operations its CPU plugin runs far slower than ONNX Runtime does.
SLOW_IN_OPENVINO = frozenset({"ScatterElementsUpdate", "ScatterNDUpdate", "ScatterUpdate"})


@dataclass(frozen=True)
class Choice:
    engine: str  # a name of service.engines.REGISTRY
    precision: str  # "bf16", "fp32" (or "fp16" for TensorRT)
    why: str
    device: str | None = None


def _has_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _on_gpu(bundle: Bundle, precision: str) -> Choice:
    from service.engines.gpu import gpu
    from service.engines.tensorrt.files import engine_for

    record, why = engine_for(dict(bundle.manifest.tensorrt_engines), gpu(), "fp32" if precision == "fp32" else "fp16")
    if record is not None:
        return Choice("tensorrt", record["precision"], "the TensorRT engine built for this GPU", "cuda")
    logging.getLogger("footprints").warning(
        "%s v%d: no TensorRT engine here (%s); PyTorch on CUDA", bundle.name, bundle.version, why
    )
    return Choice("torch", "fp32", why, "cuda")


def predicted_engine(bundle: Bundle, precision: str = "auto", device: str | None = None) -> Choice:
    """The engine (and precision, device) the facts pick for ``bundle`` here (see the module)."""
    from service.engines.gpu import why_no_gpu

    if why_no_gpu() is None and (device is None or device.startswith("cuda")):
        return _on_gpu(bundle, precision)
    from service.engines.openvino import checked_precision, graph_operations

    if not _has_openvino():
        if precision in ("bf16", "int8"):
            raise InputError(f"{precision} runs on OpenVINO, which is not installed")
        return Choice("onnxruntime", "fp32", "OpenVINO is not installed", device)
    slow = sorted(graph_operations(bundle) & SLOW_IN_OPENVINO)
    if slow and precision not in ("bf16", "int8"):
        return Choice("onnxruntime", "fp32", f"its graph has {', '.join(slow)}, which OpenVINO's CPU plugin runs slowly", device)
    chosen, why = checked_precision(bundle, precision)
    return Choice("openvino", chosen, why, device)
