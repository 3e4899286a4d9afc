"""Servers and inputs the service tests share: an in-process server on its own event
loop, a ``footprints serve`` process, test tiles, and a /metrics reader."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import numpy as np
from rasterio.transform import from_origin

from service._pb import footprints_pb2 as pb
from service.api.server import Server, ServerConfig
from service.api.servicer import Limits
from service.engines import open_engine
from service.rasters import RGBRaster, write_geotiff
from service.store.repository import ModelStore
from service.tiling.engine import EngineConfig, TilingEngine

from ..conftest import REPO, wait_until

CRS = "EPSG:32616"
TRANSFORM = from_origin(500_000.0, 4_600_000.0, 0.3, 0.3)


class RunningServer:
    """A footprints server in this process, on its own event loop thread."""

    def __init__(self, cfg: ServerConfig, ready: bool = True) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(Server.start(cfg), self.loop).result(120)
        if ready:  # listening is at once; most tests want every model loaded too
            asyncio.run_coroutine_threadsafe(self.server.ready(every_model=True), self.loop).result(120)
        self.address = f"127.0.0.1:{self.server.port}"
        self.metrics_url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(120)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def config(store, **kw) -> ServerConfig:
    limits = kw.pop("limits", Limits(max_tiles_in_flight=4, max_raster_side=6000, max_batch=4, max_tiles_per_client=4))
    if "max_batch" in kw:  # windows per model call: one of the server's limits
        limits = dataclasses.replace(limits, max_batch=kw.pop("max_batch"))
    # ONNX Runtime unless a test says otherwise: these tests compare against it exactly.
    kw.setdefault("backend", "onnxruntime")
    return ServerConfig(store=store, port=0, metrics_port=0, limits=limits, grace_s=60, **kw)


# Every export checks parity (ONNX, program, precision): seconds of CPU each. A test
# session exports each small store once and copies its model folders wherever a test
# asks for it, so tests still get a store of their own to change.
_EXPORTS = Path(tempfile.mkdtemp(prefix="footprints-test-exports-"))
Spec = tuple[str, str, dict, list[float], list[float] | None]  # name, network, args, mean, std


def exported_store(root: Path, specs: list[Spec], seed: int) -> Path:
    """``root`` holding ``specs``' models, built in that order after one seed and exported
    as served (geometry, plan window and checks in each manifest)."""
    import torch

    from training.export import export
    from training.networks.model import SegmentationModel, save_checkpoint

    key = hashlib.sha256(json.dumps([specs, seed], sort_keys=True).encode()).hexdigest()[:16]
    source = _EXPORTS / key / "store"
    if not source.is_dir():
        building = _EXPORTS / key / "building"
        torch.manual_seed(seed)
        for name, network, args, mean, std in specs:
            model = SegmentationModel(network, args, mean, std)
            export(save_checkpoint(building.parent / f"{name}.pt", model), building, name)
        building.rename(source)  # whole or not at all
    root.mkdir(parents=True, exist_ok=True)
    for name, *_ in specs:
        shutil.copytree(source / name, root / name)
    return root


def small_effnet_store(root: Path, name: str, seed: int) -> Path:
    """A store of one small EfficientNet U-Net (same padding: overlap windows)."""
    return exported_store(
        root, [(name, "effnet_unet", {"decoder": [16, 16, 8, 8, 8]}, [124.0, 116.0, 104.0], [58.0, 57.0, 57.0])], seed
    )


def tile(path: Path, h: int, w: int, seed: int = 0, dtype="uint8", bands: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (bands, h, w)).astype(dtype)
    rgb[:, h // 4 : h // 2, w // 4 : w // 2] = 230  # some structure
    write_geotiff(path, rgb, crs=CRS, transform=TRANSFORM)
    return path


def in_process(store, name, path, window):
    entry = ModelStore(store).get(name)
    engine = TilingEngine(open_engine(entry, "onnxruntime"), EngineConfig(window=window))
    with RGBRaster(path) as src:
        return engine.probabilities(src)


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def raw_header(w, h, **kw):
    return pb.TileHeader(
        model=kw.pop("model", "amll"),
        raw=pb.RawRgbInput(width=w, height=h, georeference=pb.Georeference(crs=CRS, transform=list(TRANSFORM.to_gdal()))),
        **kw,
    )


def serve_process(store, *extra, stderr=None):
    """A ``footprints serve`` process on free ports: (process, address, metrics URL).
    Its log (stderr, a line per call) goes to ``stderr`` (a file), else a temporary
    file: a pipe nobody reads would fill and stall the server."""
    exe = Path(sys.executable).with_name("footprints")
    log = stderr if stderr is not None else tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        # ONNX Runtime unless asked otherwise, as _config: tests compare against it exactly.
        [str(exe), "serve", "--store", str(store), "--port", "0", "--metrics-port", "0", "--backend", "onnxruntime", *extra],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=REPO,
    )
    line = proc.stdout.readline()  # "listening", at once; then "serving" once the default model is
    if line.startswith("footprints listening"):
        line = proc.stdout.readline()
    match = re.search(r"serving .* on 127\.0\.0\.1:(\d+)(?: \([^)]*\))?, metrics on (http://\S+)", line)
    if match is None:
        proc.wait(30)
        log.seek(0)
        raise AssertionError(line + log.read())
    address = f"127.0.0.1:{match.group(1)}"
    wait_until(lambda: _settled(address), 120, f"every model of {store} to load")  # the default serves first
    return proc, address, match.group(2)


def _settled(address: str) -> bool:
    import grpc

    from service._pb import footprints_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        models = pb_grpc.SegmentationStub(channel).ListModels(pb.ListModelsRequest(), timeout=10).models
    return all(m.state != "loading" for m in models)
