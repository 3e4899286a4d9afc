"""TorchServe as our model tier: archives built by `footprints torchserve archive`,
served by a real TorchServe (Java 17) on free ports of 127.0.0.1, windows of tiles
sent there by our front end, mixed with our own model servers."""

from __future__ import annotations

import importlib.util
import shutil
import signal
import threading

import grpc
import numpy as np
import pytest
import rasterio

from service.client import FootprintsClient
from service.engines import open_engine
from service.errors import InputError
from service.rasters import RGBRaster
from service.remote.servers import Link
from service.store.repository import PROGRAM, ModelStore
from service.tiling.engine import EngineConfig, TilingEngine
from service.torchserve.archive import build_archive
from service.torchserve.runner import TorchServe, TorchServeConfig

from ...conftest import run_cli, wait_until
from ..servers import CRS, TRANSFORM, RunningServer, config, scrape, serve_process, tile

pytestmark = [
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17, which this machine lacks"),
    pytest.mark.skipif(
        importlib.util.find_spec("ts") is None, reason="TorchServe is not installed (pip install '.[torchserve]')"
    ),
]


@pytest.fixture(scope="module")
def torchserve(store, tmp_path_factory):
    """A TorchServe over archives the CLI built from the test store (amll: large
    windows; nus: dual resolution)."""
    archives = tmp_path_factory.mktemp("archives")
    for name in ("amll", "nus"):
        done = run_cli("torchserve", "archive", "--model", name, "--store", str(store), "--out", str(archives))
        assert done.returncode == 0, done.stderr
    ts = TorchServe(TorchServeConfig(archives, log_dir=tmp_path_factory.mktemp("torchserve-logs")))
    try:
        assert ts.wait_ready(2) == {"amll-v1": 1, "nus-v1": 1}
        yield ts
    finally:
        ts.stop()


def _torch_in_process(store, name, path, window) -> np.ndarray:
    engine = TilingEngine(open_engine(ModelStore(store).get(name), "torch", device="cpu"), EngineConfig(window=window))
    with RGBRaster(path) as src:
        return engine.probabilities(src)


def _agrees(mask: np.ndarray, probs: np.ndarray) -> None:
    """The in-process mask, pixel for pixel: TorchServe runs the same exported program
    on the same uint8 crops through the same input preparation."""
    assert np.array_equal(mask > 0, probs >= 0.5), f"{np.count_nonzero((mask > 0) != (probs >= 0.5))} pixels differ"


def test_a_tile_on_torchserve_equals_the_in_process_mask(store, torchserve, tmp_path):
    image = tile(tmp_path / "t.tif", 700, 650, seed=3)
    front = RunningServer(config(store, model_servers=[f"torchserve://{torchserve.address}"]))
    try:
        with FootprintsClient(front.address) as client:
            for name, window in (("amll", 252), ("nus", 256)):
                out = tmp_path / f"{name}.tif"
                result = client.segment_file(image, out, model=name, window=window, progress=False)
                assert result.summary.backend == "remote" and result.summary.windows > 2
                with rasterio.open(out) as m:
                    _agrees(m.read(1), _torch_in_process(store, name, image, window))
    finally:
        front.stop()


def test_torchserve_and_our_model_servers_mix(store, torchserve, tmp_path):
    ours, address, metrics = serve_process(store, "--backend", "torch")
    try:
        front = RunningServer(config(store, model_servers=[f"torchserve://{torchserve.address}", address]))
        try:
            image = tile(tmp_path / "m.tif", 800, 760, seed=4)
            with FootprintsClient(front.address) as client:
                client.segment_file(image, tmp_path / "mask.tif", model="amll", window=252, progress=False)
            with rasterio.open(tmp_path / "mask.tif") as m:
                _agrees(m.read(1), _torch_in_process(store, "amll", image, 252))
            assert scrape(metrics)['footprints_windows_total{model="amll/1"}'] > 0  # ours took some
        finally:
            front.stop()
    finally:
        ours.send_signal(signal.SIGTERM)
        ours.wait(60)


def test_a_torchserve_that_dies_mid_tile_fails_over_to_the_other_model_server(store, tmp_path):
    """TorchServe killed (-9, its whole process group) mid-tile: its batches go to our
    model server and the tile completes, equal to in-process; with that one gone too,
    the next tile fails UNAVAILABLE naming both."""
    archives = tmp_path / "archives"
    build_archive(store, "amll", archives)
    ts = TorchServe(TorchServeConfig(archives, log_dir=tmp_path / "logs"))
    ours, address, _ = serve_process(store, "--backend", "torch")
    front = None
    try:
        ts.wait_ready(1)
        link = Link(timeout_s=10.0, health_every_s=0.2, health_timeout_s=1.0)
        front = RunningServer(config(store, model_servers=[f"torchserve://{ts.address}", address], link=link, max_batch=1))
        image = tile(tmp_path / "long.tif", 1500, 1500, seed=2)
        outcome: dict = {}

        def run() -> None:
            with FootprintsClient(front.address) as client:
                outcome["r"] = client.segment_file(
                    image, tmp_path / "mask.tif", model="amll", window=252, progress=False, timeout=300
                )

        t = threading.Thread(target=run)
        t.start()
        wait_until(lambda: scrape(front.metrics_url).get('footprints_windows_total{model="amll/1"}', 0) > 4, 60, "first windows")
        ts.signal(signal.SIGKILL)
        t.join(300)
        assert outcome["r"].summary.height == 1500
        with rasterio.open(tmp_path / "mask.tif") as m:
            _agrees(m.read(1), _torch_in_process(store, "amll", image, 252))
        ours.kill()
        ours.wait(30)
        with FootprintsClient(front.address) as client, pytest.raises(grpc.RpcError) as err:
            client.segment_array(np.zeros((3, 300, 300), np.uint8), CRS, TRANSFORM, model="amll", window=252, timeout=60)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ts.address in err.value.details() and address in err.value.details()
    finally:
        if front is not None:
            front.stop()
        ours.kill()
        ts.stop()


def test_an_archive_of_a_damaged_graph_is_refused(store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(store / "amll", copy / "amll")
    program = copy / "amll" / "1" / PROGRAM
    data = bytearray(program.read_bytes())
    data[len(data) // 2] ^= 0xFF
    program.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256 does not match"):
        build_archive(copy, "amll", tmp_path / "out")
    done = run_cli("torchserve", "archive", "--model", "amll", "--store", str(copy), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "sha256 does not match" in done.stderr and "Traceback" not in done.stderr
    assert not list((tmp_path / "out").glob("*.mar"))
