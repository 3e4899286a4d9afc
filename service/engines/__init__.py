"""Engines by name: each turns a batch of window crops into building probabilities.

``open_engine(bundle, name)`` loads a store version on the engine registered under
``name``; ``auto`` is the engine this machine's facts predict (:mod:`.choice`). Each
engine module is imported only when its engine is asked for, so a serving install
without PyTorch or TensorRT never imports them.
"""

from __future__ import annotations

from collections.abc import Callable

from service.engines.base import Bundle, Engine
from service.errors import InputError

# null answers every window with zeros: the front end's cost alone (benchmarks/frontend.py).
ENGINES = ("auto", "onnxruntime", "openvino", "torch", "tensorrt", "null")
Factory = Callable[[Bundle, "str | None", str], Engine]
REGISTRY: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    def add(factory: Factory) -> Factory:
        REGISTRY[name] = factory
        return factory

    return add


def _fp32_only(name: str, precision: str) -> None:
    if precision in ("bf16", "int8"):
        raise InputError(f"the {name} engine runs fp32 only; {precision} runs on --backend openvino")


@register("onnxruntime")
def _onnxruntime(bundle: Bundle, device: str | None, precision: str) -> Engine:
    _fp32_only("onnxruntime", precision)
    from service.engines.onnxruntime import OnnxRuntimeEngine

    return OnnxRuntimeEngine(bundle, device or "cpu")


@register("openvino")
def _openvino(bundle: Bundle, device: str | None, precision: str) -> Engine:
    try:
        from service.engines.openvino import OpenVinoEngine
    except ModuleNotFoundError as e:
        raise InputError(f"the openvino engine needs OpenVINO, which is not installed ({e})") from None
    return OpenVinoEngine(bundle, precision)


@register("torch")
def _torch(bundle: Bundle, device: str | None, precision: str) -> Engine:
    _fp32_only("torch", precision)
    try:
        from service.engines.pytorch import TorchEngine
    except ModuleNotFoundError as e:
        raise InputError(f"the torch engine needs PyTorch, which is not installed ({e}); use --backend onnxruntime") from None
    return TorchEngine.load(bundle, device)


@register("tensorrt")
def _tensorrt(bundle: Bundle, device: str | None, precision: str) -> Engine:
    from service.engines.tensorrt.runtime import TensorRTEngine

    return TensorRTEngine.load(bundle, "fp32" if precision == "fp32" else "fp16")


@register("null")
def _null(bundle: Bundle, device: str | None, precision: str) -> Engine:
    from service.engines.null import NullEngine

    return NullEngine(bundle)


def open_engine(bundle: Bundle, name: str = "onnxruntime", device: str | None = None, precision: str = "auto") -> Engine:
    """Load ``bundle`` on the engine ``name`` (``auto``: the predicted one); ``precision``
    (auto, fp32, bf16) matters to OpenVINO, and fp32 against fp16 to TensorRT. An
    ensemble version loads each of its members so."""
    if bundle.manifest.members:
        from service.engines.ensemble import open_ensemble

        return open_ensemble(bundle, lambda member: open_engine(member, name, device, precision))
    if name == "auto":
        from service.engines.choice import predicted_engine

        choice = predicted_engine(bundle, precision, device)
        name, precision, device = choice.engine, choice.precision, choice.device
    factory = REGISTRY.get(name)
    if factory is None:
        raise InputError(f"unknown backend '{name}'; known: {', '.join(ENGINES)}")
    return factory(bundle, device, precision)


__all__ = ["ENGINES", "REGISTRY", "Bundle", "Engine", "open_engine", "register"]
