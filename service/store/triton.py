"""Triton Inference Server's view of the store: ``config.pbtxt`` for the ONNX graph
(``<name>/config.pbtxt``, platform ``onnxruntime_onnx``) and, where TensorRT engines
were built, for them (``<name>_tensorrt/config.pbtxt``, platform ``tensorrt_plan``,
one engine file per GPU compute capability). The store folder can be mounted into
Triton as its model repository as it is; our own server ignores ``<name>_tensorrt``
(no manifest there) and reads the engines through the version's manifest."""

from __future__ import annotations

from service.tiling.geometry import Geometry

OUTPUT = "probability"
TENSORRT_SUFFIX = "_tensorrt"


def _io(geometry: Geometry) -> str:
    inputs = ",\n".join(f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] }}' for n in geometry.input_names)
    return f"input [\n{inputs}\n]\n" + f'output [\n  {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ 1, -1, -1 ] }}\n]\n'


BATCHING = "dynamic_batching {\n  max_queue_delay_microseconds: 5000\n}\n"


def onnx_config(name: str, geometry: Geometry, max_batch_size: int = 8) -> str:
    """ONNX Runtime platform, variable batch/height/width, and a dynamic batcher (the
    service's own batcher follows the same settings)."""
    return f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n' + _io(geometry) + BATCHING


def tensorrt_config(name: str, geometry: Geometry, max_batch_size: int, engines: dict[str, str]) -> str:
    """The engines of ``name`` as a Triton model: ``engines`` maps a compute capability
    ("9.0") to the plan file built for it (an engine runs only where it was built)."""
    files = "".join(f'cc_model_filenames {{ key: "{cc}" value: "{f}" }}\n' for cc, f in sorted(engines.items()))
    gpu = "instance_group [\n  { kind: KIND_GPU count: 1 }\n]\n"
    return (
        f'name: "{name}{TENSORRT_SUFFIX}"\nplatform: "tensorrt_plan"\nmax_batch_size: {max_batch_size}\n'
        + _io(geometry)
        + files
        + gpu
        + BATCHING
    )
