"""The GPU path on a GPU: TensorRT engines built from the test store, checked against
the ONNX graph, and served through gRPC; PyTorch and ONNX Runtime on CUDA. Skipped,
with the reason, where there is no GPU or no TensorRT (CI machines: no GPU)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from google.protobuf import text_format

from service.client import FootprintsClient
from service.engines import open_engine
from service.engines.gpu import gpu, why_no_gpu
from service.store.repository import ModelStore
from service.tiling.engine import EngineConfig, TilingEngine

from ..service.servers import CRS, TRANSFORM, RunningServer, config

NO_GPU = why_no_gpu()
pytestmark = pytest.mark.skipif(NO_GPU is not None, reason=f"needs an NVIDIA GPU with CUDA: {NO_GPU}")
needs_tensorrt = pytest.mark.skipif(
    NO_GPU is not None or importlib.util.find_spec("tensorrt") is None,
    reason=f"needs TensorRT (pip install '.[gpu]') on an NVIDIA GPU{'' if NO_GPU is None else ': ' + NO_GPU}",
)


def _cpu_probabilities(store, name: str, rgb: np.ndarray, window: int) -> np.ndarray:
    from service.tiling.engine import ArraySource

    engine = TilingEngine(open_engine(ModelStore(store).get(name), "onnxruntime"), EngineConfig(window=window))
    return engine.probabilities(ArraySource(rgb))


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_engines_build_match_the_onnx_graph_and_show_in_tritons_layout(store, precision):
    from tritonclient.grpc import model_config_pb2 as triton

    from service.engines.tensorrt.builder import build_engine

    for name in ("amll", "nus"):
        record = build_engine(store, name, precision, max_batch=2, max_window=1344)
        floor = 0.99 if precision == "fp16" else 0.9999
        assert record["parity"]["mask_agreement"] >= floor and record["compute_capability"] == gpu().cc
        manifest = json.loads((ModelStore(store).get(name).folder / "manifest.json").read_text())
        assert record in manifest["tensorrt_engines"].values()
        config = text_format.Parse((store / f"{name}_tensorrt" / "config.pbtxt").read_text(), triton.ModelConfig())
        assert config.platform == "tensorrt_plan" and gpu().cc in config.cc_model_filenames
        assert (store / f"{name}_tensorrt" / "1" / config.cc_model_filenames[gpu().cc]).resolve().is_file()


@needs_tensorrt
def test_a_tile_through_grpc_on_tensorrt_agrees_with_the_cpu(store):
    from service.engines.tensorrt.builder import build_engine

    build_engine(store, "amll", "fp16", max_batch=2, max_window=1344)
    rgb = np.random.default_rng(5).integers(0, 256, (3, 1500, 1400), dtype=np.uint8)
    s = RunningServer(config(store, backend="tensorrt", models=["amll"]))
    try:
        with FootprintsClient(s.address) as client:
            mask, result = client.segment_array(rgb, CRS, TRANSFORM, model="amll", window=1180)
        assert result.summary.backend == "tensorrt" and result.summary.precision == "fp16"
    finally:
        s.stop()
    cpu = _cpu_probabilities(store, "amll", rgb, 1180) >= 0.5
    assert np.mean((mask > 0) == cpu) >= 0.999


@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
def test_pytorch_and_onnxruntime_on_cuda_agree_with_the_cpu(store, kind):
    import onnxruntime as ort

    if kind == "onnxruntime" and "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has no CUDA provider (onnxruntime-gpu is not installed)")
    entry = ModelStore(store).get("amll")
    backend = open_engine(entry, kind, device="cuda")
    assert backend.device == "cuda"
    crops = [np.random.default_rng(1).integers(0, 256, (2, 3, 572, 572), dtype=np.uint8)]
    got = backend.infer(crops)
    want = open_engine(entry, "onnxruntime").infer(crops)
    assert np.abs(got - want).max() < 1e-3
