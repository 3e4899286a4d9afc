"""Engines and precision per CPU, the precision agreement check, the windows of a
5000-px tile under the default (measured) settings, and OpenVINO through gRPC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from service.client import FootprintsClient
from service.engines import open_engine
from service.engines.choice import predicted_engine
from service.engines.openvino import checked_precision, graph_operations
from service.engines.precision import choose_precision
from service.engines.timings import cache_dir, cached_seconds, needs_measuring
from service.errors import InputError
from service.machine import CpuInfo, this_cpu
from service.rasters import RGBRaster
from service.store.repository import MANIFEST, ModelStore
from service.tiling.engine import EngineConfig, TilingEngine
from service.tiling.geometry import Geometry, LargeWindows, OverlapWindows
from training.precision import FLIP_LIMIT, compare, precision_checks, torch_reference

from ...conftest import REPO, run_cli, write_image
from ..servers import RunningServer, config, small_effnet_store

WITH_BF16 = CpuInfo("a CPU with AMX", frozenset({"avx512f", "amx_bf16", "amx_tile"}), 2)
WITHOUT_BF16 = CpuInfo("an AVX2-only CPU", frozenset({"avx2", "fma"}), 2)
needs_bf16 = pytest.mark.skipif(not this_cpu().bf16, reason=f"{this_cpu().model} computes no bf16 natively")


def test_precision_follows_the_cpu_and_bf16_is_refused_without_it():
    assert choose_precision("auto", WITH_BF16) == "bf16"
    assert choose_precision("auto", WITHOUT_BF16) == "fp32"
    assert choose_precision("fp32", WITH_BF16) == "fp32"
    with pytest.raises(InputError, match="bf16 needs a CPU with AVX512-BF16 or AMX.*an AVX2-only CPU.*--precision fp32"):
        choose_precision("bf16", WITHOUT_BF16)
    with pytest.raises(InputError, match="unknown precision 'fp16'"):
        choose_precision("fp16", WITH_BF16)


class Fragile(torch.nn.Module):
    """A network whose answer hangs on a difference bf16 cannot hold: the first layer
    adds 256 to a value in [0, 1] and the second takes 256.5 away (bf16 keeps 8 bits,
    so between layers 256 + v rounds to 256 or 258)."""

    def __init__(self) -> None:
        super().__init__()
        self.lift, self.decide = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 1, 1)
        with torch.no_grad():
            self.lift.weight.fill_(1 / (3 * 255))
            self.lift.bias.fill_(256.0)
            self.decide.weight.fill_(50.0 / 4)
            self.decide.bias.fill_(-256.5 * 50)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decide(torch.relu(self.lift(x))))


@needs_bf16
def test_the_precision_check_refuses_bf16_where_masks_flip(tmp_path):
    fragile = Fragile().eval()
    path = tmp_path / "fragile.onnx"
    torch.onnx.export(fragile, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["rgb"], dynamo=False, opset_version=17)
    inputs = [np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64)).astype(np.float32)]
    checks = precision_checks(torch_reference(fragile), path, ["rgb"], inputs, ["noise a", "noise b"])
    assert checks["openvino-fp32"]["accepted"] and checks["openvino-fp32"]["mask_flip_share"] == 0
    bf16 = checks["openvino-bf16"]
    assert bf16["measured"] and not bf16["accepted"] and bf16["mask_flip_share"] > 40 * FLIP_LIMIT


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    return small_effnet_store(tmp_path_factory.mktemp("engine-store"), "tiny", seed=3)


def _with_check(store: Path, tmp_path: Path, record: dict) -> Path:
    """A copy of ``store`` whose manifest records ``record`` for OpenVINO bf16."""
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    manifest_path = copy / "tiny" / "1" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["precision_checks"]["openvino-bf16"] = record
    manifest_path.write_text(json.dumps(manifest))
    return copy


def test_a_refused_bf16_is_not_served(tiny_store, tmp_path, monkeypatch):
    want = np.zeros((1, 1, 100, 100), np.float32)
    got = want.copy()
    got[..., :2, :] = 1.0  # 2 % of the pixels change side
    record = {**compare(got, want, ["a window"]), "measured": True}
    assert not record["accepted"]
    entry = ModelStore(_with_check(tiny_store, tmp_path, record)).get("tiny")
    monkeypatch.setattr("service.engines.openvino.this_cpu", lambda: WITH_BF16)
    with pytest.raises(InputError, match=r"tiny v1 in bf16 flips 2.00% of mask pixels.*limit 0.5%.*--precision fp32"):
        open_engine(entry, "openvino", precision="bf16")
    precision, why = checked_precision(entry, "auto")  # auto falls back, saying why
    assert precision == "fp32" and "flips 2.00%" in why
    monkeypatch.setattr("service.engines.openvino.this_cpu", lambda: WITHOUT_BF16)
    assert checked_precision(entry, "auto") == ("fp32", "no native bf16 on an AVX2-only CPU")


class _Planned:
    """What the planner sees of a backend: the geometry, the memory bound and the
    seconds per window measured on some machine."""

    def __init__(self, spec: Geometry, window_bytes) -> None:
        self.geometry, self.window_bytes, self.device = spec, window_bytes, "cpu"


def test_the_windows_of_a_5000_px_tile_under_default_settings():
    gib = 2**30
    # AMLL's valid U-Net, seconds proportional to the window's area: the fewest
    # windows the budget allows. With the paper's 2636 as the largest measured size
    # that is 2 x 2 windows (2700 px: the 2500 px each covers start on a multiple of the stride), not a 3 x 3 grid.
    amll = LargeWindows({"cpu": 1180}, depth=4)
    per_px = {s: 1e-7 * s * s for s in (572, 1180, 2636)}
    plan = TilingEngine(
        _Planned(amll, lambda n: n * n * 600), EngineConfig(memory_budget_bytes=12 * gib, window_seconds=per_px)
    ).plan(5000, 5000)
    assert len(plan.windows) == 4 and plan.window == 2700 and {w.out_size for w in plan.windows} == {2516}
    # A budget that holds only ~1900-px windows: 3 x 3, sized to the tile (not 3 x 3 of the cap).
    plan = TilingEngine(
        _Planned(amll, lambda n: n * n * 600), EngineConfig(memory_budget_bytes=2 * gib, window_seconds=per_px)
    ).plan(5000, 5000)
    assert len(plan.windows) == 9 and 3 * plan.windows[0].out_size >= 5000 and plan.window < 1900

    # The default model's same-padding geometry: blended windows give other last bits
    # for other plans, so whatever was measured the plan is the manifest's, fitted.
    effnet = OverlapWindows({"cpu": 512, "plan": 1376}, multiple=32, margin=32, overlap=64)
    flat = {512: 0.02, 1024: 0.08, 1792: 0.245}
    steep = {512: 0.02, 1024: 0.08, 1792: 0.6}
    plans = [
        TilingEngine(_Planned(effnet, lambda n: n * n * 2800), EngineConfig(window_seconds=t)).plan(5000, 5000)
        for t in (flat, steep, {})
    ]
    assert len({(p.window, len(p.windows)) for p in plans}) == 1 and len(plans[0].windows) == 16
    covered = np.zeros((5000, 5000), bool)  # every pixel is covered
    for w in plans[0].windows:
        r0, r1, c0, c1 = w.keep
        covered[r0:r1, c0:c1] = True
    assert covered.all()
    # A manifest without a plan window (older exports): its CPU default, as before.
    plain = TilingEngine(
        _Planned(OverlapWindows({"cpu": 512}, multiple=32, margin=32, overlap=64), lambda n: n * n * 2800),
        EngineConfig(),
    ).plan(5000, 5000)
    assert plain.window == 512 and len(plain.windows) == 13 * 13


def test_openvino_serves_through_grpc_as_in_process(tiny_store, tmp_path):
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (3, 300, 340)).astype(np.uint8)
    rgb[:, 100:180, 60:200] = 235
    image = write_image(tmp_path / "tile.tif", rgb)
    backend = open_engine(ModelStore(tiny_store).get("tiny"), "openvino")
    with RGBRaster(image) as src:
        want = TilingEngine(backend, EngineConfig(window=256)).probabilities(src)
    server = RunningServer(config(tiny_store, backend="openvino"))
    try:
        with FootprintsClient(server.address) as client:
            (info,) = client.list_models()
            assert (info.backend, info.precision) == ("openvino", backend.precision)
            assert backend.precision == ("bf16" if this_cpu().bf16 else "fp32")
            result = client.segment_file(image, tmp_path / "mask.tif", model="tiny", window=256, progress=False)
            assert (result.summary.backend, result.summary.precision) == ("openvino", backend.precision)
        with rasterio.open(tmp_path / "mask.tif") as mask:
            assert np.array_equal(mask.read(1) > 0, want >= 0.5)
    finally:
        server.stop()


def test_auto_serves_the_engine_the_facts_predict_and_measures_nothing(tiny_store, tmp_path, monkeypatch):
    monkeypatch.setenv("FOOTPRINTS_CACHE", str(tmp_path / "cache"))
    entry = ModelStore(tiny_store).get("tiny")
    backend = open_engine(entry, "auto")
    assert (backend.engine, backend.precision) == ("openvino", "bf16" if this_cpu().bf16 else "fp32")
    assert not (cache_dir() / "engines.json").exists()  # nothing timed
    assert (cache_dir() / "openvino").is_dir()  # compiled shapes are kept for the next start
    # Graphs with scatter operations (ONERA's index unpooling) go to ONNX Runtime.
    monkeypatch.setattr("service.engines.openvino.graph_operations", lambda e: frozenset({"ScatterElementsUpdate"}))
    choice = predicted_engine(entry)
    assert (choice.engine, choice.precision) == ("onnxruntime", "fp32") and "ScatterElementsUpdate" in choice.why


def test_the_stored_onera_graph_is_predicted_onto_onnx_runtime():
    onera = ModelStore(REPO / "model_store").get("onera")
    assert "ScatterElementsUpdate" in graph_operations(onera)
    assert predicted_engine(onera).engine == "onnxruntime"


def test_tune_measures_large_window_models_once_and_their_plans_follow(store, tmp_path, monkeypatch):
    """``footprints tune`` times the windows a 5000-px tile may be cut into; the engine
    then reads them from the cache, and only valid-convolution plans follow them."""
    monkeypatch.setenv("FOOTPRINTS_CACHE", str(tmp_path / "cache"))
    done = run_cli("tune", "--store", str(store), "--models", "amll,nus")
    assert done.returncode == 0, done.stderr
    assert "amll v1 (openvino" in done.stdout and "nus v1" in done.stdout and "plan fixed by its manifest" in done.stdout
    (record,) = json.loads((cache_dir() / "engines.json").read_text()).values()  # amll only: nus's plan is fixed
    assert record["model"] == "amll v1" and all(float(t) > 0 for t in record["seconds"].values())
    amll = open_engine(ModelStore(store).get("amll"), "auto")
    assert cached_seconds(ModelStore(store).get("amll"), amll.engine, amll.precision) == {
        int(k): float(v) for k, v in record["seconds"].items()
    }
    nus = ModelStore(store).get("nus")
    assert not needs_measuring(nus) and needs_measuring(ModelStore(store).get("amll"))
