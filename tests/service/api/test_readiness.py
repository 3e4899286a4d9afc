"""Ready in seconds: the repository's whole store served by ``footprints serve`` on a
machine that has measured and compiled nothing, then started again warm."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.client import FootprintsClient
from service.engines import open_engine
from service.rasters import RGBRaster
from service.store.repository import ModelStore
from service.tiling.engine import EngineConfig, TilingEngine

from ...conftest import REAL_OAM, REPO

STORE = REPO / "model_store"
FIRST_TILE_S = 20.0  # launch to the first real tile served, on a machine that measured nothing
WARM_START_S = 5.0  # launch to SERVING, with the engine caches of an earlier start


def _rss(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) * 1024


def _launch(cache: Path) -> tuple[subprocess.Popen, float, str]:
    """``footprints serve`` of the whole store; returns it, its launch time and its address
    (read from the line it prints as soon as it listens)."""
    env = {**os.environ, "FOOTPRINTS_CACHE": str(cache)}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("footprints")), "serve", "--store", str(STORE), "--port", "0",
         "--metrics-port", "-1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env,
    )  # fmt: skip
    line = proc.stdout.readline()
    match = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
    assert match, line
    return proc, t0, match.group(1)


def _serving(address: str, service: str = "") -> bool:
    with grpc.insecure_channel(address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
    return status == health_pb2.HealthCheckResponse.SERVING


def _until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


@pytest.mark.skipif(not REAL_OAM.is_dir(), reason=f"real imagery not found at {REAL_OAM}")
def test_a_cold_start_serves_its_first_real_tile_within_20_s_and_a_warm_one_starts_in_5(tmp_path):
    image = REAL_OAM / "images" / "zanzibar1.tif"
    cache = Path(tempfile.mkdtemp(prefix="footprints-cold-", dir=tmp_path))
    default = ModelStore(STORE).default_name()
    proc, t0, address = _launch(cache)
    try:
        listening = time.monotonic() - t0
        # The port answers at once: health, and ListModels with every model's state.
        with FootprintsClient(address, timeout=60) as client:
            states = {m.name: m.state for m in client.list_models()}
            assert set(states) == set(ModelStore(STORE).names()) and set(states.values()) <= {"loading", "ready"}
            result = None
            while result is None:  # the default model answers as soon as it is loaded
                try:
                    result = client.segment_file(image, tmp_path / "cold.tif", progress=False)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE and "still loading" in e.details(), e.details()
                    time.sleep(0.1)
        first_tile = time.monotonic() - t0
        assert result.summary.model == default
        assert first_tile < FIRST_TILE_S, f"first tile after {first_tile:.1f} s (listening after {listening:.1f} s)"
        assert _serving(address) and _serving(address, f"footprints.v1.Segmentation/{default}")
        assert _rss(proc.pid) < 3 * 2**30  # nothing measured in this process
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    # The same tile in-process gives the same mask (the engine is predicted, not measured).
    entry = ModelStore(STORE).get(default)
    with RGBRaster(image) as src:
        want = TilingEngine(open_engine(entry, "auto"), EngineConfig()).probabilities(src) >= 0.5
    with rasterio.open(tmp_path / "cold.tif") as m:
        assert np.array_equal(m.read(1) > 0, want)

    proc, t0, address = _launch(cache)  # warm: OpenVINO's compiled models are cached
    try:
        _until(lambda: _serving(address), WARM_START_S + 30, "SERVING")
        warm = time.monotonic() - t0
        assert warm < WARM_START_S, f"warm start took {warm:.1f} s"
        print(f"cold: listening {listening:.1f} s, first tile {first_tile:.1f} s; warm: SERVING {warm:.1f} s")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
