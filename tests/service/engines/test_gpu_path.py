"""The GPU path, checked on the CPU: optimisation profiles from each model's window
rules, engine naming and the refusal of an engine built for another GPU, Triton's
view of the store (config.pbtxt parsed with Triton's own model_config.proto), and the
clean refusal of GPU commands where there is no GPU."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as triton

from service.engines.gpu import why_no_gpu
from service.engines.tensorrt.files import pick_engine, plan_name, tag
from service.engines.tensorrt.profiles import KNEE, pick, profiles
from service.errors import InputError
from service.store.repository import ModelStore
from service.store.triton import tensorrt_config
from service.tiling.geometry import DualWindows

from ...conftest import REPO, run_cli

STORE = REPO / "model_store"


def _newest(name: str):
    return ModelStore(STORE).get(name)


@pytest.mark.parametrize("name", ["amll", "nus", "effnet", "onera", "raisa", "baseline"])
def test_profiles_cover_every_window_the_engine_is_sent_once(name):
    spec = _newest(name).geometry
    profs = profiles(spec, max_batch=4, max_window=2688)
    sides, default = spec.tensorrt_sides(2688)
    for side in sides:  # every legal side falls in exactly one profile, at batch 1 and the profile's largest
        holders = [p for p in profs if p.covers(side, 1)]
        assert len(holders) == 1, (name, side)
        assert pick(profs, side, holders[0].max_batch) == profs.index(holders[0])
    assert any(p.opt_side == default for p in profs)  # tuned where the GPU runs by default
    for p in profs:
        assert p.min_side <= p.opt_side <= p.max_side
        lo, opt, hi = p.shapes()
        assert lo[0] == 1 and hi[0] == p.max_batch and lo[1] == hi[1] == 3
    if spec.mode == "large":  # the paper's 2636-px windows run in the profile tuned for them
        assert default == 2636 and profs[pick(profs, 2636, 1)].opt_side == 2636
        assert sides[0] == spec.valid.min_input and sides[-1] == 2684 and profs[0].max_side <= KNEE < profs[1].min_side
    if spec.mode == "dual":  # the plan's windows with their 2x context: the context must fit the largest window
        assert default == spec.default_window("cpu") and 2 * sides[-1] <= 2688


def test_a_window_outside_the_profiles_is_refused_clearly():
    profs = profiles(_newest("amll").geometry, max_batch=4, max_window=2688)
    with pytest.raises(InputError, match="outside this engine's profiles"):
        pick(profs, 2700, 1)
    with pytest.raises(InputError, match="batch <= 2"):
        pick(profs, 2636, 3)  # large windows: batches of up to half


def test_engines_are_named_by_gpu_and_tensorrt_and_another_gpus_is_refused():
    assert tag("sm90", "11.4.0.106", "fp16") == "sm90.trt11.4.fp16"
    assert plan_name("sm80", "10.13.0.35", "fp32") == "model.sm80.trt10.13.fp32.plan"
    records = {tag("sm80", "10.13.0.35", "fp16"): {"file": "model.sm80.trt10.13.fp16.plan", "gpu": "NVIDIA A100"}}
    assert pick_engine(records, "sm80", "10.13.1.2", "fp16", "amll:4")["gpu"] == "NVIDIA A100"  # patch releases share engines
    with pytest.raises(InputError) as err:
        pick_engine(records, "sm90", "11.4.0.106", "fp16", "amll:4")
    text = str(err.value)
    assert "sm90" in text and "sm80.trt10.13.fp16 (NVIDIA A100)" in text and "footprints build-engine --model amll:4" in text


def _parse(text: str):
    return text_format.Parse(text, triton.ModelConfig())


def test_the_stores_config_pbtxt_files_are_valid_triton_configs():
    store = ModelStore(STORE)
    for name in store.names():
        config = _parse((STORE / name / "config.pbtxt").read_text())
        entry = store.get(name)
        assert config.name == name and config.platform == "onnxruntime_onnx" and config.max_batch_size > 0
        assert [i.name for i in config.input] == list(entry.manifest.inputs) == list(entry.geometry.input_names)
        assert all(list(i.dims) == [3, -1, -1] and i.data_type == triton.TYPE_FP32 for i in config.input)
        assert [o.name for o in config.output] == [entry.manifest.output] and list(config.output[0].dims) == [
            1,
            -1,
            -1,
        ]
        assert config.HasField("dynamic_batching")


def test_the_tensorrt_config_is_a_valid_triton_config():
    config = _parse(
        tensorrt_config("nus", DualWindows(), 4, {"9.0": "model.sm90.trt11.4.fp16.plan", "8.0": "model.sm80.trt11.4.fp16.plan"})
    )
    assert config.name == "nus_tensorrt" and config.platform == "tensorrt_plan" and config.max_batch_size == 4
    assert [i.name for i in config.input] == ["rgb", "context"]
    assert dict(config.cc_model_filenames) == {"9.0": "model.sm90.trt11.4.fp16.plan", "8.0": "model.sm80.trt11.4.fp16.plan"}
    assert config.instance_group[0].kind == triton.ModelInstanceGroup.KIND_GPU and config.HasField("dynamic_batching")


@pytest.mark.skipif(why_no_gpu() is None, reason="this machine has a GPU: the refusal is for machines without one")
def test_gpu_commands_refuse_cleanly_without_a_gpu(tmp_path):
    cases = {
        ("build-engine", "--model", "amll"): "building a TensorRT engine needs an NVIDIA GPU with CUDA",
        (
            "serve",
            "--backend",
            "tensorrt",
            "--models",
            "amll",
            "--port",
            "0",
            "--metrics-port",
            "-1",
        ): "the tensorrt backend needs an NVIDIA GPU",
        (
            "segment",
            str(tmp_path / "x.tif"),
            "-o",
            str(tmp_path / "m.tif"),
            "--backend",
            "tensorrt",
            "--model",
            "amll",
        ): "needs an NVIDIA GPU",
    }
    for args, text in cases.items():
        done = run_cli(*args)
        lines = [line for line in done.stderr.splitlines() if "error:" in line]
        assert done.returncode == 2 and len(lines) == 1 and text in lines[0] and "Traceback" not in done.stderr, done.stderr[
            -1500:
        ]
