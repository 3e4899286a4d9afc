"""INT8 (NNCF's post-training quantisation, run by OpenVINO): gated like bf16 on how many
mask pixels flip against fp32, and served by ``auto`` only where it passed and was
measured faster on this very CPU."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from service.engines import open_engine
from service.engines.openvino import checked_precision
from service.errors import InputError
from service.machine import this_cpu
from service.store.repository import MANIFEST, ModelStore
from training.precision import FLIP_LIMIT, precision_checks, torch_reference

from ...conftest import REAL_OAM
from ..servers import small_effnet_store
from .test_engines import Fragile

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="INT8 needs NNCF (the train extra)")


def test_the_int8_gate_refuses_a_model_built_to_be_fragile(tmp_path):
    # Its decision hangs on the fourth significant digit of a sum: INT8 arithmetic
    # flips it wherever it stays, so no layer may stay INT8 and nothing is written.
    fragile = Fragile().eval()
    path = tmp_path / "fragile.onnx"
    torch.onnx.export(fragile, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["rgb"], dynamo=False, opset_version=17)
    inputs = [np.random.default_rng(0).integers(0, 256, (4, 3, 64, 64)).astype(np.float32)]
    out = tmp_path / "model.int8.xml"
    checks = precision_checks(torch_reference(fragile), path, ["rgb"], inputs, [f"noise {i}" for i in range(4)], out)
    int8 = checks["openvino-int8"]
    assert int8["measured"] and not int8["accepted"], int8
    assert int8.get("mask_flip_share", 1.0) > FLIP_LIMIT or "no layer stays INT8" in int8["why"]


@pytest.fixture(scope="module")
def int8_store(tmp_path_factory):
    """A store version with an INT8 graph and its record, as `check-precision --int8`
    leaves them (quantised here without accuracy control: a random-weight model's
    probabilities hug 0.5, and restoring it layer by layer takes minutes)."""
    import nncf
    import openvino as ov

    from service.store.manifest import INT8, INT8_WEIGHTS, update
    from service.store.repository import file_sha256
    from training.precision import compare

    store = small_effnet_store(tmp_path_factory.mktemp("int8-store"), "tiny", seed=3)
    entry = ModelStore(store).get("tiny")
    model = ov.Core().read_model(str(entry.folder / "model.onnx"))
    rng = np.random.default_rng(0)
    calib = [rng.integers(0, 256, (1, 3, 128, 128)).astype(np.float32) for _ in range(4)]
    int8 = nncf.quantize(model, nncf.Dataset(calib), subset_size=4)
    ov.save_model(int8, str(entry.folder / INT8), compress_to_fp16=False)
    record = {**compare(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), ["calibration"]), "measured": True, "cpu": this_cpu().key}
    files = {**entry.manifest.files, **{f: file_sha256(entry.folder / f) for f in (INT8, INT8_WEIGHTS)}}
    update(entry.folder, precision_checks={**entry.manifest.precision_checks, "openvino-int8": record}, files=files)
    return store, calib


def _recorded(store, tmp_path, **changes):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    path = copy / "tiny" / "1" / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["precision_checks"]["openvino-int8"].update(changes)
    path.write_text(json.dumps(manifest))
    return ModelStore(copy).get("tiny")


def test_a_store_versions_int8_graph_is_what_the_engine_serves(int8_store, tmp_path):
    import openvino as ov

    from training.precision import openvino_outputs

    store, calib = int8_store
    entry = ModelStore(store).get("tiny")
    engine = open_engine(entry, "openvino", precision="int8")
    assert engine.precision == "int8"
    crops = [calib[0].astype(np.uint8)]
    got = engine.infer(crops)
    direct = openvino_outputs(None, ["rgb"], calib[:1], "int8", model=ov.Core().read_model(str(entry.folder / "model.int8.xml")))
    assert np.allclose(got, direct[:, 0], atol=1e-6)  # the INT8 graph, not the fp32 one
    assert not np.array_equal(got, open_engine(entry, "openvino", precision="fp32").infer(crops))
    # A damaged INT8 graph is refused by its sha256, as every store file is (in a copy:
    # the store is the module's).
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    (copy / "tiny" / "1" / "model.int8.bin").write_bytes(b"damaged")
    with pytest.raises(InputError, match="sha256 does not match"):
        open_engine(ModelStore(copy).get("tiny"), "openvino", precision="int8")


def test_auto_takes_int8_only_where_it_passed_and_was_measured_faster_here(int8_store, tmp_path):
    store, _ = int8_store
    here = this_cpu()
    rival = "speedup_vs_bf16" if here.bf16 else "speedup_vs_fp32"
    faster = _recorded(store, tmp_path / "a", accepted=True, mask_flip_share=0.001, **{rival: 1.7})
    assert checked_precision(faster, "auto")[0] == "int8"
    elsewhere = _recorded(store, tmp_path / "b", accepted=True, mask_flip_share=0.001, cpu="another CPU", **{rival: 1.7})
    assert checked_precision(elsewhere, "auto")[0] != "int8"
    assert "another CPU" in checked_precision(elsewhere, "int8")[1]  # forced: served, saying so
    slower = _recorded(store, tmp_path / "c", accepted=True, mask_flip_share=0.001, **{rival: 0.9})
    assert checked_precision(slower, "auto")[0] != "int8"
    refused = _recorded(store, tmp_path / "d", accepted=False, mask_flip_share=0.02, **{rival: 3.0})
    assert checked_precision(refused, "auto")[0] != "int8"
    with pytest.raises(InputError, match=r"tiny v1 in INT8: flips 2.00% of mask pixels.*--precision fp32"):
        checked_precision(refused, "int8")


def test_int8s_second_gate_is_the_iou_of_held_out_tiles_served_at_both_precisions(int8_store, tmp_path, capsys):
    import rasterio

    from service.cli import main
    from service.outputs.segment import segment_file
    from service.tiling.engine import TilingEngine
    from training.data.sources import Root
    from training.loao import area_tiles
    from training.precision import IOU_LIMIT, held_out_iou

    root = tmp_path / "held-out"
    for kind in ("images", "gt"):  # one real 0.15 m tile: served resampled to the model's 0.3 m
        (root / kind).mkdir(parents=True)
        shutil.copy(REAL_OAM.parent / "real-oam-z20" / kind / "kampala1.tif", root / kind / "kampala1.tif")
    tiles = area_tiles([Root(root)], [])["kampala"]
    store, _ = int8_store
    entry = ModelStore(store).get("tiny")
    record = held_out_iou(entry, tiles)
    with rasterio.open(tiles[0].gt) as gt:
        truth = gt.read(1) > 0
    for precision in ("fp32", "int8"):  # counted here from the masks as served
        out = tmp_path / f"{precision}.tif"
        segment_file(TilingEngine(open_engine(entry, "openvino", precision=precision)), tiles[0].image, out, progress=False)
        with rasterio.open(out) as m:
            mask = m.read(1) > 0
        union = np.sum(mask | truth)
        assert record["held_out_iou"][precision] == pytest.approx(np.sum(mask & truth) / union if union else 1.0)
    assert record["iou_change"] == pytest.approx(record["held_out_iou"]["int8"] - record["held_out_iou"]["fp32"])
    # Refused exactly when INT8 moves the IoU by more than the limit, saying so.
    assert (record.get("accepted") is False) == (abs(record["iou_change"]) > IOU_LIMIT)
    assert record.get("accepted", True) or "held-out IoU moved" in record["why"]
    # The CLI will not quantise without tiles to hold the IoU gate to.
    assert main(["check-precision", "tiny", "--store", str(store), "--int8"]) == 2
    assert "needs --held-out" in capsys.readouterr().out


def test_a_bf16_check_made_where_bf16_was_absent_serves_fp32_on_a_bf16_cpu(int8_store, tmp_path, monkeypatch):
    """A store version checked on a CPU without native bf16 records bf16 as not measured; on a
    CPU that has it, auto serves fp32 and says why, and a forced bf16 is refused."""
    import service.engines.openvino as openvino_engine
    from service.machine import CpuInfo

    store, _ = int8_store
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    path = copy / "tiny" / "1" / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["precision_checks"]["openvino-bf16"] = {"accepted": False, "measured": False, "why": "AMD EPYC has no native bf16"}
    manifest["precision_checks"].pop("openvino-int8", None)
    path.write_text(json.dumps(manifest))
    entry = ModelStore(copy).get("tiny")
    monkeypatch.setattr(openvino_engine, "this_cpu", lambda: CpuInfo("a bf16 CPU", frozenset({"avx512_bf16"}), 2))
    precision, why = checked_precision(entry, "auto")
    assert precision == "fp32" and "never measured (AMD EPYC has no native bf16" in why
    with pytest.raises(InputError, match=r"tiny v1 in bf16 was never measured .*--precision fp32"):
        checked_precision(entry, "bf16")
