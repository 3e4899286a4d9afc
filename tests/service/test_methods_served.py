"""Methods 3, 4 and the baseline through the service: exported, listed, and each
segmenting a real GeoTIFF into a georeferenced mask on a real gRPC server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import rasterio
import torch

from service._pb import footprints_pb2 as pb
from service.client import FootprintsClient
from service.engines import open_engine
from service.rasters import RGBRaster
from service.store.repository import ModelStore
from service.tiling.engine import EngineConfig, TilingEngine
from training import export as export_mod
from training.export import export
from training.networks.model import SegmentationModel, save_checkpoint

from .servers import RunningServer, config

METHODS = {
    "onera": ("segnet_sdt", {"decoder_convs": [1, 1, 1, 1, 1]}, 32),
    "raisa": ("stacked_unet", {"filters": [4, 8, 8, 16, 16]}, 16),
    "baseline": ("fcn_mlp", {"widths": [4, 8, 8, 8], "hidden": 16}, 8),
}


@pytest.fixture(scope="module")
def methods_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods-store")
    for name, (net, args, _) in METHODS.items():
        torch.manual_seed(1)
        model = SegmentationModel(net, args, [120.0, 118.0, 100.0])
        export(save_checkpoint(root.parent / f"{name}.pt", model), root, name)
    return root


def test_each_method_exports_with_parity_and_the_overlap_geometry(methods_store):
    for name, (net, _, multiple) in METHODS.items():
        entry = ModelStore(methods_store).get(name)
        m = entry.manifest.to_json()
        # SegNet's argmax unpooling is held to the mask, not the last bit (export.ARGMAX_PARITY).
        bound = export_mod.ARGMAX_PARITY["max_abs_diff"] if name == "onera" else export_mod.PARITY_ATOL
        assert m["network"] == net and m["geometry"]["mode"] == "overlap" and m["parity_max_abs_diff"] < bound
        assert m["program_parity_max_abs_diff"] < bound and 0 < m["parity_building_share"] < 1
        assert entry.geometry.multiple == multiple and entry.geometry.tta == (name == "raisa")


def _in_process(store, name, image, tta, tta_passes=None):
    config = EngineConfig(window=256, tta=tta, tta_passes=tta_passes)
    engine = TilingEngine(open_engine(ModelStore(store).get(name), "onnxruntime"), config)
    with RGBRaster(image) as src:
        return np.where(engine.probabilities(src) >= 0.5, 255, 0).astype(np.uint8)


def test_each_method_segments_a_real_geotiff_through_grpc(methods_store, real_oam, tmp_path):
    image = real_oam / "images" / "kampala1.tif"
    server = RunningServer(config(methods_store))
    try:
        with FootprintsClient(server.address) as client:
            listed = {m.name: m for m in client.list_models()}
            assert set(listed) == set(METHODS)
            assert all(m.mode == pb.MODE_OVERLAP for m in listed.values())
            assert [n for n, m in listed.items() if m.tta] == ["raisa"]
            for name in METHODS:
                out = tmp_path / f"{name}.tif"
                result = client.segment_file(image, out, model=name, window=256, progress=False)
                assert result.summary.model == name and result.summary.windows >= 4
                assert result.summary.tta_passes == (8 if name == "raisa" else 1)
                with rasterio.open(out) as mask, rasterio.open(image) as src:
                    assert (mask.crs, mask.transform, mask.shape) == (src.crs, src.transform, src.shape)
                    got = mask.read(1)
                # Raisa's default is test-time augmentation; the others run plain.
                assert np.array_equal(got, _in_process(methods_store, name, image, tta=name == "raisa")), name
            # A request may still switch Raisa's TTA off, and that is a different answer.
            client.segment_file(image, tmp_path / "plain.tif", model="raisa", window=256, tta=False, progress=False)
            with rasterio.open(tmp_path / "plain.tif") as plain:
                plain_mask = plain.read(1)
            assert np.array_equal(plain_mask, _in_process(methods_store, "raisa", image, tta=False))
            eight = _in_process(methods_store, "raisa", image, tta=True)
            assert not np.array_equal(plain_mask, eight)
            # Or ask for fewer passes (the quarter turns): the same answer as in-process.
            four_run = client.segment_file(image, tmp_path / "four.tif", model="raisa", window=256, tta_passes=4, progress=False)
            assert four_run.summary.tta_passes == 4
            with rasterio.open(tmp_path / "four.tif") as four:
                four_mask = four.read(1)
            assert np.array_equal(four_mask, _in_process(methods_store, "raisa", image, tta=None, tta_passes=4))
            assert not np.array_equal(four_mask, eight) and not np.array_equal(four_mask, plain_mask)
            with pytest.raises(grpc.RpcError) as refused:
                client.segment_file(image, tmp_path / "three.tif", model="raisa", tta_passes=3, progress=False)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "tta_passes must be one of 2, 4, 8, got 3" in refused.value.details()
    finally:
        server.stop()


def test_the_repository_store_serves_every_method_on_held_out_real_imagery(real_oam, tmp_path):
    """The store this repository ships: all five methods and the real-imagery default listed
    over gRPC, each finding kampala's buildings (an area none of them trained on)."""
    from ..conftest import REPO

    store = REPO / "model_store"
    image, truth = real_oam / "images" / "kampala2.tif", real_oam / "gt" / "kampala2.tif"
    with rasterio.open(truth) as gt:
        buildings = gt.read(1) > 0
    server = RunningServer(config(store))
    try:
        with FootprintsClient(server.address) as client:
            listed = {m.name: m for m in client.list_models()}
            assert {"amll", "nus", "onera", "raisa", "baseline", "effnet"} <= set(listed)
            assert listed["amll"].mode == pb.MODE_LARGE_WINDOW and listed["nus"].mode == pb.MODE_DUAL_RESOLUTION
            assert [n for n, m in listed.items() if m.tta] == ["raisa"]
            for name in ("amll", "nus", "onera", "raisa", "baseline", "effnet"):
                out = tmp_path / f"{name}.tif"
                client.segment_file(image, out, model=name, progress=False)
                with rasterio.open(out) as mask, rasterio.open(image) as src:
                    assert (mask.crs, mask.transform, mask.shape) == (src.crs, src.transform, src.shape)
                    found = mask.read(1) > 0
                iou = np.count_nonzero(found & buildings) / np.count_nonzero(found | buildings)
                assert iou > 0.4, f"{name}: IoU {iou:.3f} on kampala2"
    finally:
        server.stop()
