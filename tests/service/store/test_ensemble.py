"""An ensemble is a store version: it averages its members' probabilities, with the weights
its manifest lists, on every path that loads store versions."""

from __future__ import annotations

import numpy as np
import pytest

from service.client import FootprintsClient
from service.engines import open_engine
from service.errors import InputError
from service.rasters import RGBRaster
from service.store.ensemble import write_ensemble
from service.store.repository import ModelStore
from service.tiling.engine import EngineConfig, TilingEngine

from ..servers import RunningServer, config, small_effnet_store, tile


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble") / "store"
    # The small models other tests use (exported once a session), as two different members.
    small_effnet_store(root, "tiny", seed=3)
    small_effnet_store(root, "blended", seed=7)
    return root


def _probabilities(root, name, image):
    engine = TilingEngine(open_engine(ModelStore(root).get(name), "onnxruntime"), EngineConfig())
    with RGBRaster(image) as src:
        return engine.probabilities(src)


def test_an_ensemble_is_the_weighted_average_of_its_members_in_process_and_over_grpc(members, tmp_path):
    entry = write_ensemble(members, "both", ["tiny:1", "blended:1@3"])
    assert entry.version == 1
    assert [(m["name"], m["version"], m["weight"]) for m in entry.manifest.members] == [("tiny", 1, 1.0), ("blended", 1, 3.0)]
    image = tile(tmp_path / "t.tif", 300, 420, seed=5)
    a, b = _probabilities(members, "tiny", image), _probabilities(members, "blended", image)
    assert not np.allclose(a, b, atol=1e-3)  # two different members, or the average proves nothing
    both = _probabilities(members, "both", image)
    np.testing.assert_allclose(both, 0.25 * a + 0.75 * b, atol=1e-6)

    s = RunningServer(config(members))
    try:
        with FootprintsClient(s.address) as client:
            listed = {m.name: m for m in client.list_models()}
            assert list(listed["both"].members) == ["tiny:1", "blended:1"]
            r = client.segment_file(image, tmp_path / "mask.tif", model="both", progress=False)
        assert r.summary.model == "both"
        import rasterio

        with rasterio.open(tmp_path / "mask.tif") as m:
            cut = ModelStore(members).get("both").manifest.threshold
            assert np.array_equal(m.read(1), np.where(both >= cut, 255, 0).astype(np.uint8))
    finally:
        s.stop()


def test_an_ensemble_refuses_members_that_cut_windows_differently_and_single_members(members, store):
    with pytest.raises(InputError, match="at least two members"):
        write_ensemble(members, "one", ["tiny:1"])
    with pytest.raises(InputError, match="expected NAME:VERSION"):
        write_ensemble(members, "bad", ["tiny", "blended:1"])
    with pytest.raises(InputError, match="weight must be > 0"):
        write_ensemble(members, "bad", ["tiny:1@0", "blended:1"])
    with pytest.raises(InputError, match="cuts windows differently"):
        write_ensemble(store, "mixed", ["amll:1", "nus:1"])


def test_a_torchserve_archive_of_an_ensemble_is_refused_with_its_members_named(members, tmp_path):
    from service.torchserve.archive import build_archive

    entry = write_ensemble(members, "pair", ["tiny:1", "blended:1"])
    with pytest.raises(InputError, match=r"is an ensemble \(tiny:1, blended:1\)"):
        build_archive(members, f"pair:{entry.version}", tmp_path / "mar")
    assert not (tmp_path / "mar").exists()


def test_engines_already_open_average_equally_and_must_align(members, tmp_path):
    # What `footprints loao --runs A --runs B` scores: training runs, not store versions.
    from service.engines.ensemble import EnsembleEngine

    store = ModelStore(members)
    a, b = (open_engine(store.get(n), "onnxruntime") for n in ("tiny", "blended"))
    windows = [np.random.default_rng(1).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)]
    pa, pb = a.infer(windows), b.infer(windows)
    assert not np.allclose(pa, pb, atol=1e-3)
    both = EnsembleEngine.of([a, b], "runs")
    np.testing.assert_allclose(both.infer(windows), (pa + pb) / 2, atol=1e-6)
    assert both.window_bytes(256) == max(a.window_bytes(256), b.window_bytes(256))
    b.resolution_m = 0.15
    with pytest.raises(ValueError, match="differ in window geometry or resolution"):
        EnsembleEngine.of([a, b], "runs")
