"""ONNX export into the versioned store, the store itself, and the ONNX Runtime backend."""

import copy
import json

import numpy as np
import pytest
import torch

from service.engines import open_engine
from service.errors import InputError, NotFoundError
from service.store.repository import ModelStore
from service.tiling.engine import ArraySource, EngineConfig, TilingEngine
from training import export as export_mod
from training.networks.model import SegmentationModel, load_checkpoint, save_checkpoint

from ..conftest import REPO, run_cli, write_image

NETS = {"amll": ("amll_unet", {"filters": (4, 8, 16, 32, 64)}), "nus": ("nus_dual_unet", {"channels": (4, 8, 16, 8, 4)})}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    for name, (net, args) in NETS.items():
        torch.manual_seed(0)
        model = SegmentationModel(net, args, [110.0, 112.0, 114.0])
        # publish --loao records a held-out threshold in the checkpoint; amll has none.
        chosen = {"threshold": 0.35} if name == "nus" else {}
        ckpt = save_checkpoint(root.parent / f"{name}.pt", model, metrics={"overall": {"iou": 0.42}}, **chosen)
        export_mod.export(ckpt, root, name)
    return root


def test_export_writes_a_triton_style_versioned_store(store):
    for name, (net, _) in NETS.items():
        folder = store / name / "1"
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["network"] == net and manifest["version"] == 1
        assert manifest["parity_max_abs_diff"] < 1e-4
        assert 0 <= manifest["parity_building_share"] <= 1 and manifest["parity_windows"] == [
            "synthetic ashford",
            "synthetic ironbridge",
        ]
        assert set(manifest["files"]) == {"model.onnx", "model.pt2", "model.pt"}
        assert manifest["metrics"] == {"overall": {"iou": 0.42}}
        config = (store / name / "config.pbtxt").read_text()
        assert 'platform: "onnxruntime_onnx"' in config and "dims: [ 3, -1, -1 ]" in config
    assert [i["name"] for i in json.loads((store / "nus/1/manifest.json").read_text())["inputs"]] == ["rgb", "context"]
    assert json.loads((store / "amll/1/manifest.json").read_text())["geometry"]["margin"] == 92
    # The decision threshold every path cuts at: the held-out one where publish chose it.
    assert [ModelStore(store).get(n).manifest.threshold for n in ("amll", "nus")] == [0.5, 0.35]


@pytest.mark.parametrize("name", ["amll", "nus"])
def test_onnx_runtime_and_pytorch_tile_to_the_same_mask(store, name):
    entry = ModelStore(store).get(name)
    rgb = np.random.default_rng(1).integers(0, 256, (3, 300, 280), dtype=np.uint8)
    cfg = EngineConfig(window=252 if name == "amll" else 64, dual_overlap=16)
    ort = TilingEngine(open_engine(entry, "onnxruntime"), cfg).probabilities(ArraySource(rgb))
    pt = TilingEngine(open_engine(entry, "torch", "cpu"), cfg).probabilities(ArraySource(rgb))
    assert ort.std() > 1e-3
    np.testing.assert_allclose(ort, pt, atol=1e-4)


def test_export_refuses_a_graph_that_disagrees_with_pytorch(tmp_path, monkeypatch):
    model = SegmentationModel(*NETS["amll"], [0.0, 0.0, 0.0])
    ckpt = save_checkpoint(tmp_path / "m.pt", model)
    real_export = export_mod.export_onnx

    # A graph that is not quite the model: its building logit is off by 0.5.
    monkeypatch.setattr(export_mod, "export_onnx", lambda m, path: real_export(_drift_building_logit(m, 0.5), path))
    with pytest.raises(InputError, match="ONNX Runtime and PyTorch differ by .* export refused"):
        export_mod.export(ckpt, tmp_path / "store", "amll")
    assert not list((tmp_path / "store").rglob("model.onnx*"))


def _drift_building_logit(model: SegmentationModel, by: float) -> SegmentationModel:
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.net.head.bias[1] += by  # the building logit only (a shift of both cancels)
    return other


def test_parity_windows_catch_a_drift_in_the_trained_default_model_that_noise_hides(tmp_path, monkeypatch):
    """The synthetic-trained amll v3 calls noise "not building" at ~1e-20, so a graph whose
    building logit is off by 0.2 agrees with it on noise; on the parity windows (synthetic
    cities, where it decides both ways) the drift shows and the export is refused."""
    entry = ModelStore(REPO / "model_store").get("amll", 3)
    model, _ = load_checkpoint(entry.path("model.pt"))
    drifted = _drift_building_logit(model, 0.2)
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 572, 572)).astype(np.float32))
    cities = [torch.from_numpy(x) for x in export_mod._parity_inputs(model)[0]]
    with torch.no_grad():
        on_noise = (model(noise) - drifted(noise)).abs().max().item()
        p = model(*cities)
        on_cities = (p - drifted(*cities)).abs().max().item()
    assert on_noise < export_mod.PARITY_ATOL < on_cities
    assert 0.02 < (p > 0.5).float().mean().item() < 0.9  # both classes present

    real_export = export_mod.export_onnx
    monkeypatch.setattr(export_mod, "export_onnx", lambda m, path: real_export(_drift_building_logit(m, 0.2), path))
    with pytest.raises(InputError, match="ONNX Runtime and PyTorch differ by .* export refused"):
        export_mod.export(entry.path("model.pt"), tmp_path / "store", "amll")


def test_store_versions_and_errors(store, tmp_path):
    s = ModelStore(store)
    assert s.names() == ["amll", "nus"]
    m = SegmentationModel(*NETS["amll"], [0.0, 0.0, 0.0])
    export_mod.export(save_checkpoint(tmp_path / "v2.pt", m), store, "amll")
    s = ModelStore(store)
    assert s.get("amll").version == 2 and s.get("amll", 1).version == 1
    with pytest.raises(NotFoundError, match="no model 'segnet'.*have: amll, nus"):
        s.get("segnet")
    with pytest.raises(NotFoundError, match="has no version 7; have: \\[1, 2\\]"):
        s.get("amll", 7)
    onnx = store / "amll" / "2" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"tampered")
    with pytest.raises(InputError, match="sha256 does not match"):
        open_engine(ModelStore(store).get("amll", 2))
    export_mod.remove_version(store, "amll", 2)
    assert ModelStore(store).get("amll").version == 1


def test_segment_cli_runs_a_store_model_with_onnx_runtime(store, tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (3, 300, 300), dtype=np.uint8)
    img = write_image(tmp_path / "t.tif", rgb)
    done = run_cli(
        "segment", str(img), "-o", str(tmp_path / "m.tif"), "--model", "amll:1", "--store", str(store), "--window", "252"
    )
    assert done.returncode == 0, done.stderr
    missing = run_cli("segment", str(img), "-o", str(tmp_path / "m.tif"), "--model", "nope", "--store", str(store))
    assert missing.returncode == 2 and "no model 'nope'" in missing.stderr


@pytest.mark.parametrize("name", ["amll", "nus"])
def test_the_manifest_holds_what_a_server_needs_without_training(store, name):
    """Window memory and geometry come from the manifest, and match what the network
    itself says (the meta-device count) at sizes the fit never saw."""
    entry = ModelStore(store).get(name)
    model, _ = load_checkpoint(entry.path("model.pt"))
    sides = (1180, 2636) if name == "amll" else (64, 384, 512)
    for side in sides:
        assert abs(entry.memory.bytes(side) - model.window_bytes(side)) <= 1e-6 * model.window_bytes(side), side
    assert entry.geometry == model.geometry
    program = open_engine(entry, "torch", "cpu")
    assert program.geometry == entry.geometry and program.window_bytes(sides[0]) == entry.memory.bytes(sides[0])


def test_the_trained_real_imagery_model_agrees_with_its_graph_on_real_windows(real_oam):
    """The store's default model (trained on real areas): its manifest's parity covers
    real windows, and ONNX Runtime reproduces eager PyTorch on a real window now."""
    import rasterio

    from service.engines.onnxruntime import OnnxRuntimeEngine
    from service.rasters import read_window

    store = ModelStore(REPO / "model_store")
    entry = store.get()
    manifest = entry.manifest.to_json()
    if not manifest.get("std_rgb"):
        pytest.skip(f"the default model {entry.name} is not a real-imagery model")
    assert any(w.startswith("real ") for w in manifest["parity_windows"]) and manifest["parity_max_abs_diff"] < 1e-4
    model, _ = load_checkpoint(entry.path("model.pt"))
    with rasterio.open(real_oam / "images/zanzibar1.tif") as src:
        crop = read_window(src, 200, 600, 384, 384, bands=[1, 2, 3])[None]
    ort = OnnxRuntimeEngine(entry).infer([crop])
    with torch.no_grad():
        eager = model(torch.from_numpy(crop.astype(np.float32)))[:, 0].numpy()
    assert 0.01 < (eager > 0.5).mean() < 0.99  # a window with buildings and ground
    assert float(np.abs(ort - eager).max()) < 1e-4
