"""The gRPC service against real servers on 127.0.0.1 (small networks keep it fast)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service._pb import footprints_pb2 as pb
from service.api.servicer import Limits
from service.client import FootprintsClient
from service.engines import open_engine
from service.outputs.polygons import PolygonOptions
from service.outputs.segment import SegmentOptions, segment_file
from service.store.repository import ModelStore
from service.tiling.engine import EngineConfig, TilingEngine

from ...conftest import REPO, wait_until
from ..servers import (
    CRS,
    TRANSFORM,
    RunningServer,
    config,
    in_process,
    raw_header,
    scrape,
    serve_process,
    small_effnet_store,
    tile,
)


def _large_windows(store, side: int, window: int) -> int:
    """How many windows the server's tiling plan has for a square raster (the AMLL test model)."""
    engine = TilingEngine(open_engine(ModelStore(store).get("amll"), "onnxruntime"), EngineConfig(window=window))
    return len(engine.plan(side, side)[0])


@pytest.fixture(scope="module")
def server(store):
    s = RunningServer(config(store))
    yield s
    s.stop()


def _idle(url: str) -> bool:
    """No tile in flight, no window queued, none holding memory: no window can run any more."""
    m = scrape(url)
    return (
        m["footprints_tiles_in_flight"] == 0
        and m['footprints_queued_windows{model="amll/1"}'] == 0
        and m["footprints_window_memory_bytes"] == 0
    )


def test_a_5000_px_tile_round_trip_equals_the_in_process_engine(server, store, tmp_path):
    image = tile(tmp_path / "big.tif", 5000, 5000)
    out = tmp_path / "mask.tif"
    with FootprintsClient(server.address) as client:
        result = client.segment_file(image, out, model="amll", window=1180, progress=False)
    with rasterio.open(out) as m:
        mask = m.read(1)
        assert m.crs.to_string() == CRS and m.transform == TRANSFORM  # georeference preserved
    expected = np.where(in_process(store, "amll", image, 1180) >= 0.5, 255, 0).astype(np.uint8)
    assert np.array_equal(mask, expected)  # bit for bit
    s = result.summary
    assert (s.width, s.height, s.model, s.model_version, s.backend) == (5000, 5000, "amll", 1, "onnxruntime")
    assert s.georeference.crs == CRS and list(s.georeference.transform) == list(TRANSFORM.to_gdal())
    assert result.rows_received == 5000 and result.row_messages > 4  # streamed in parts


def test_dual_resolution_through_the_service_and_raw_rows(server, store, tmp_path):
    image = tile(tmp_path / "d.tif", 420, 400, seed=3)
    with rasterio.open(image) as src:
        rgb = src.read()
    with FootprintsClient(server.address) as client:
        mask, result = client.segment_array(rgb, CRS, TRANSFORM, model="nus", outputs=pb.Outputs(geotiff=True, polygons=True))
    expected = np.where(in_process(store, "nus", image, None) >= 0.5, 255, 0).astype(np.uint8)
    assert np.array_equal(mask, expected)
    assert result.summary.windows == 4 and result.summary.window == 384
    with rasterio.MemoryFile(result.geotiff) as mem, mem.open() as ds:
        assert np.array_equal(ds.read(1), expected) and ds.crs.to_string() == CRS and ds.transform == TRANSFORM
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    polygons = json.loads(result.polygons_geojson)
    assert polygons["crs"]["properties"]["name"] == CRS and polygons["type"] == "FeatureCollection"


def test_a_stated_resolution_is_served_at_the_models_and_returned_on_the_rasters_grid(server, store, tmp_path):
    image = tile(tmp_path / "coarse.tif", 260, 300, seed=5)
    with rasterio.open(image) as src:
        rgb = src.read()
    with FootprintsClient(server.address) as client:
        mask, result = client.segment_array(rgb, CRS, TRANSFORM, model="amll", gsd_m=0.6)
    s = result.summary
    assert mask.shape == (260, 300) and (s.width, s.height) == (300, 260)
    assert s.ground_resolution_m == pytest.approx(0.6) and s.resample_factor == pytest.approx(2.0)
    assert s.threshold == pytest.approx(0.5)  # the version's own (its manifest)
    entry = ModelStore(store).get("amll")
    engine = TilingEngine(open_engine(entry, "onnxruntime"))
    here = segment_file(engine, image, tmp_path / "here.tif", SegmentOptions(gsd_m=0.6), progress=False)
    assert here["resample_factor"] == pytest.approx(2.0)
    with rasterio.open(tmp_path / "here.tif") as m:
        assert np.array_equal(m.read(1), mask)  # the server's mask, bit for bit


def test_buildings_from_the_server_equal_the_in_process_ones_with_the_requests_controls(server, store, tmp_path):
    image = tile(tmp_path / "b.tif", 400, 420, seed=11)
    opts = PolygonOptions(min_area_m2=2.0, simplify_m=0.3, regularize=True, wgs84=True)
    with FootprintsClient(server.address) as client:
        client.segment_file(
            image, tmp_path / "m.tif", model="amll", polygons=tmp_path / "remote.geojson", polygon=opts, progress=False
        )
        with pytest.raises(grpc.RpcError) as refused:
            client.segment_file(
                image, tmp_path / "x.tif", model="amll", polygons=tmp_path / "x.geojson", polygon=PolygonOptions(min_area_m2=-1)
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "polygon_options.min_area_m2 must be a finite number >= 0, got -1.0" in refused.value.details()
    engine = TilingEngine(open_engine(ModelStore(store).get("amll"), "onnxruntime"))
    here = tmp_path / "here.geojson"
    segment_file(engine, image, tmp_path / "here.tif", SegmentOptions(polygons=here, polygon=opts), progress=False)
    remote = json.loads((tmp_path / "remote.geojson").read_text())
    assert remote == json.loads(here.read_text()) and remote["features"]
    assert {(f["properties"]["model"], f["properties"]["model_version"]) for f in remote["features"]} == {("amll", 1)}
    assert all(0 <= f["properties"]["confidence"] <= 1 for f in remote["features"])
    # WGS 84 as asked: longitude near the tile's (UTM zone 16N, 500 km easting: 87 degrees W).
    lon = remote["features"][0]["geometry"]["coordinates"][0][0][0]
    assert "crs" not in remote and -87.1 < lon < -86.9


def _call(address, messages, timeout=60):
    with FootprintsClient(address) as client:
        return list(client.stub.SegmentTile(iter(messages), timeout=timeout))


def _bad_inputs(tmp_path):
    good = np.zeros(300 * 300 * 3, np.uint8).tobytes()
    u16 = tile(tmp_path / "u16.tif", 300, 300, dtype="uint16").read_bytes()
    one = tile(tmp_path / "one.tif", 300, 300, bands=1).read_bytes()
    R = pb.SegmentTileRequest
    return {
        "no header": ([R(chunk=good[:10])], grpc.StatusCode.INVALID_ARGUMENT, "before the header"),
        "empty stream": ([], grpc.StatusCode.INVALID_ARGUMENT, "no header"),
        "header twice": (
            [R(header=raw_header(300, 300)), R(header=raw_header(300, 300))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "second header",
        ),
        "past declared size": (
            [R(header=raw_header(300, 300)), R(chunk=good), R(chunk=b"x")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "exceed the declared raster size",
        ),
        "truncated": ([R(header=raw_header(300, 300)), R(chunk=good[:1000])], grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
        "zero size": ([R(header=raw_header(0, 300))], grpc.StatusCode.INVALID_ARGUMENT, "must be positive"),
        "too large": ([R(header=raw_header(7000, 300))], grpc.StatusCode.INVALID_ARGUMENT, "exceeds the maximum side of 6000"),
        "not uint8": (
            [R(header=pb.TileHeader(model="amll", geotiff=pb.GeoTiffInput(size_bytes=len(u16)))), R(chunk=u16)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "expected uint8 RGB",
        ),
        "not RGB": (
            [R(header=pb.TileHeader(model="amll", geotiff=pb.GeoTiffInput(size_bytes=len(one)))), R(chunk=one)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "1 band(s)",
        ),
        "undecodable": (
            [R(header=pb.TileHeader(model="amll", geotiff=pb.GeoTiffInput(size_bytes=5))), R(chunk=b"hello")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "cannot be decoded",
        ),
        "unknown mode": ([R(header=raw_header(300, 300, mode=7)), R(chunk=good)], grpc.StatusCode.INVALID_ARGUMENT, "mode"),
        "wrong mode": (
            [R(header=raw_header(300, 300, mode=pb.MODE_DUAL_RESOLUTION)), R(chunk=good)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "runs large windows",
        ),
        "bad window": (
            [R(header=raw_header(300, 300, window=600)), R(chunk=good)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "window size 600 is not valid",
        ),
        "unknown model": (
            [R(header=raw_header(300, 300, model="segnet")), R(chunk=good)],
            grpc.StatusCode.NOT_FOUND,
            "no model 'segnet'",
        ),
        "no raster": ([R(header=pb.TileHeader(model="amll"))], grpc.StatusCode.INVALID_ARGUMENT, "names no raster"),
        "too coarse": (
            [R(header=raw_header(300, 300, gsd_m=2.0)), R(chunk=good)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "imagery of 2 m per pixel is outside what this model serves (0.05-1.2 m",
        ),
        "gsd not positive": (
            [R(header=raw_header(300, 300, gsd_m=-0.3)), R(chunk=good)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "gsd -0.3 m per pixel is not a positive number",
        ),
    }


def test_every_bad_input_gets_its_status_and_the_next_good_request_succeeds(server, tmp_path):
    good_rgb = np.random.default_rng(0).integers(0, 256, (3, 300, 300), dtype=np.uint8)
    for name, (messages, code, text) in _bad_inputs(tmp_path).items():
        with pytest.raises(grpc.RpcError) as err:
            _call(server.address, messages)
        assert err.value.code() == code, name
        assert text in err.value.details(), (name, err.value.details())
        with FootprintsClient(server.address) as client:
            mask, result = client.segment_array(good_rgb, CRS, TRANSFORM, model="amll", window=252)
        assert result.summary.height == 300 and mask.shape == (300, 300), name


def test_overload_is_refused_with_resource_exhausted(store):
    s = RunningServer(config(store, limits=Limits(max_tiles_in_flight=1, max_raster_side=6000)))
    try:
        gate = threading.Event()
        header = raw_header(300, 300)

        def slow():  # holds the only tile slot until released
            yield pb.SegmentTileRequest(header=header)
            gate.wait(30)
            yield pb.SegmentTileRequest(chunk=np.zeros(300 * 300 * 3, np.uint8).tobytes())

        with FootprintsClient(s.address) as client:
            holder = client.stub.SegmentTile(slow(), timeout=60)
            wait_until(lambda: scrape(s.metrics_url)["footprints_tiles_in_flight"] == 1, 30, "the slow upload to take the slot")
            with pytest.raises(grpc.RpcError) as err:
                _call(s.address, [pb.SegmentTileRequest(header=header)])
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit 1" in err.value.details()
            gate.set()
            assert any(r.WhichOneof("part") == "summary" for r in holder)
    finally:
        s.stop()


def test_cancelling_a_tile_stops_its_windows(store, tmp_path):
    s = RunningServer(config(store, max_batch=1))
    try:
        rgb = np.random.default_rng(1).integers(0, 256, (3, 3000, 3000), dtype=np.uint8)
        header = raw_header(3000, 3000, window=252)
        data = np.ascontiguousarray(rgb.transpose(1, 2, 0)).tobytes()
        messages = [pb.SegmentTileRequest(header=header)] + [
            pb.SegmentTileRequest(chunk=data[i : i + 2**22]) for i in range(0, len(data), 2**22)
        ]
        with FootprintsClient(s.address) as client:
            call = client.stub.SegmentTile(iter(messages), timeout=120)
            for reply in call:
                if reply.WhichOneof("part") == "rows":
                    call.cancel()
                    break
        wait_until(lambda: _idle(s.metrics_url), 30, "the cancelled tile's windows to stop")
        ran = scrape(s.metrics_url)['footprints_windows_total{model="amll/1"}']
        assert (
            _idle(s.metrics_url) and scrape(s.metrics_url)['footprints_windows_total{model="amll/1"}'] == ran
        )  # nothing more runs
        assert ran < _large_windows(store, 3000, 252) / 2  # 47 x 47 = 2209: most never ran
        assert scrape(s.metrics_url)["footprints_tiles_in_flight"] == 0
    finally:
        s.stop()


def test_a_missed_deadline_ends_the_call_and_its_work(store):
    s = RunningServer(config(store, max_batch=1))
    try:
        rgb = np.random.default_rng(4).integers(0, 256, (3, 3000, 3000), dtype=np.uint8)
        with FootprintsClient(s.address) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.segment_array(rgb, CRS, TRANSFORM, window=252, timeout=2.0)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: _idle(s.metrics_url), 30, "the late tile's windows to stop")
        ran = scrape(s.metrics_url)['footprints_windows_total{model="amll/1"}']
        assert _idle(s.metrics_url) and scrape(s.metrics_url)['footprints_windows_total{model="amll/1"}'] == ran < _large_windows(
            store, 3000, 252
        )
        assert scrape(s.metrics_url)["footprints_tiles_in_flight"] == 0
    finally:
        s.stop()


def test_health_reflection_models_and_metrics(server):
    channel = grpc.insecure_channel(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="footprints.v1.Segmentation")).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"footprints.v1.Segmentation", "grpc.health.v1.Health"} <= names
    channel.close()

    before = scrape(server.metrics_url)
    with FootprintsClient(server.address) as client:
        models = {m.name: m for m in client.list_models()}
        assert set(models) == {"amll", "nus"}
        assert models["amll"].mode == pb.MODE_LARGE_WINDOW and models["amll"].margin == 92 and models["amll"].stride == 16
        assert models["nus"].mode == pb.MODE_DUAL_RESOLUTION and models["nus"].context == 768
        assert client.get_model("amll", 1).versions == [1]
        with pytest.raises(grpc.RpcError) as err:
            client.get_model("amll", 9)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        client.segment_array(np.zeros((3, 300, 300), np.uint8), CRS, TRANSFORM, window=252)
    after = scrape(server.metrics_url)
    key = 'footprints_requests_total{code="OK",method="SegmentTile"}'
    assert after[key] == before.get(key, 0) + 1
    assert after['footprints_requests_total{code="NOT_FOUND",method="GetModel"}'] >= 1
    assert after['footprints_windows_total{model="amll/1"}'] > before.get('footprints_windows_total{model="amll/1"}', 0)
    assert after["footprints_tile_seconds_count"] == before.get("footprints_tile_seconds_count", 0) + 1
    assert after['footprints_model_loaded{backend="onnxruntime",mode="large",model="amll",version="1"}'] == 1
    assert any(k.startswith("footprints_batch_size_bucket") for k in after)
    assert 'footprints_queued_windows{model="amll/1"}' in after


def test_sigterm_drains_in_flight_tiles(store, tmp_path):
    proc, address, metrics = serve_process(store, "--max-batch", "1")
    try:
        rgb = np.random.default_rng(2).integers(0, 256, (3, 1500, 1500), dtype=np.uint8)
        results = {}

        def run():
            with FootprintsClient(address) as client:
                results["mask"], results["r"] = client.segment_array(rgb, CRS, TRANSFORM, window=252, timeout=120)

        t = threading.Thread(target=run)
        t.start()
        wait_until(lambda: scrape(metrics).get('footprints_windows_total{model="amll/1"}', 0) > 0, 60, "the tile's first windows")
        proc.send_signal(signal.SIGTERM)
        t.join(120)
        assert results["r"].summary.height == 1500 and results["r"].rows_received == 1500  # finished whole
        assert proc.wait(60) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        proc.kill()


def test_remote_model_servers_give_the_in_process_mask(store, tmp_path):
    procs = [serve_process(store) for _ in range(2)]
    try:
        front = RunningServer(config(store, model_servers=[a for _, a, _ in procs]))
        try:
            image = tile(tmp_path / "r.tif", 700, 650, seed=5)
            with FootprintsClient(front.address) as client:
                result = client.segment_file(image, tmp_path / "m.tif", model="amll", window=252, progress=False)
            assert result.summary.backend == "remote" and result.summary.windows > 2
            with rasterio.open(tmp_path / "m.tif") as m:
                mask = m.read(1)
            expected = np.where(in_process(store, "amll", image, 252) >= 0.5, 255, 0).astype(np.uint8)
            assert np.array_equal(mask, expected)
        finally:
            front.stop()
        # The windows were spread over both model servers.
        for proc, _, metrics in procs:
            assert scrape(metrics)['footprints_windows_total{model="amll/1"}'] > 0
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
    finally:
        for proc, _, _ in procs:
            proc.kill()


def test_a_request_that_names_no_model_gets_the_stores_default(server, store):
    with FootprintsClient(server.address) as client:
        models = {m.name: m.is_default for m in client.list_models()}
        assert models == {"amll": True, "nus": False}
        assert client.get_model("", 0).name == "amll"
        mask, result = client.segment_array(np.zeros((3, 300, 300), np.uint8), CRS, TRANSFORM, model="", window=252)
    assert result.summary.model == "amll" and mask.shape == (300, 300)


def test_the_memory_budget_bounds_windows_across_tiles(store, tmp_path):
    """A server whose budget holds one 252-px window still serves concurrent tiles
    exactly (their windows take turns), and refuses a window the budget cannot hold."""
    one_window = ModelStore(store).get("amll").memory.bytes(252)
    s = RunningServer(config(store, memory_budget_bytes=one_window))
    try:
        images = [tile(tmp_path / f"c{i}.tif", 400, 380, seed=10 + i) for i in range(3)]
        results: dict[int, np.ndarray] = {}

        def run(i: int) -> None:
            with FootprintsClient(s.address) as client:
                client.segment_file(images[i], tmp_path / f"m{i}.tif", model="amll", window=252, progress=False)
            with rasterio.open(tmp_path / f"m{i}.tif") as m:
                results[i] = m.read(1)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for i, image in enumerate(images):
            expected = np.where(in_process(store, "amll", image, 252) >= 0.5, 255, 0).astype(np.uint8)
            assert np.array_equal(results[i], expected), i
        assert scrape(s.metrics_url)["footprints_memory_budget_bytes"] == one_window
        assert scrape(s.metrics_url)["footprints_window_memory_bytes"] == 0  # all given back
        with FootprintsClient(s.address) as client, pytest.raises(grpc.RpcError) as err:
            client.segment_array(np.zeros((3, 600, 600), np.uint8), CRS, TRANSFORM, model="amll", window=508)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "memory budget" in err.value.details()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def overlap_store(tmp_path_factory):
    """A store with one same-padding model (EfficientNet U-Net, small decoder)."""
    return small_effnet_store(tmp_path_factory.mktemp("overlap-store"), "effnet", seed=0)


def test_overlap_windows_through_grpc_and_remote_model_servers(overlap_store, tmp_path):
    """The same-padding window mode end to end: ListModels states it, a tile through the
    service and through a remote model server equals the in-process engine."""
    image = tile(tmp_path / "o.tif", 600, 520, seed=6)
    expected = np.where(in_process(overlap_store, "effnet", image, 256) >= 0.5, 255, 0).astype(np.uint8)
    assert 0 < np.count_nonzero(expected) < expected.size
    proc, address, _ = serve_process(overlap_store)
    try:
        local = RunningServer(config(overlap_store))
        front = RunningServer(config(overlap_store, model_servers=[address]))
        try:
            for server, backend in ((local, "onnxruntime"), (front, "remote")):
                with FootprintsClient(server.address) as client:
                    (info,) = client.list_models()
                    assert info.mode == pb.MODE_OVERLAP and info.margin == 32 and info.stride == 32 and info.is_default
                    result = client.segment_file(image, tmp_path / f"{backend}.tif", window=256, progress=False)
                assert result.summary.backend == backend and result.summary.windows > 4 and result.summary.window == 256
                with rasterio.open(tmp_path / f"{backend}.tif") as m:
                    assert np.array_equal(m.read(1), expected), backend
        finally:
            local.stop()
            front.stop()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_start_up_failures_are_one_line_and_a_port_in_use_is_refused(store):
    """A second server on a port in use must not start and split the traffic
    (SO_REUSEPORT); a metrics port in use and an unreachable model server end in
    one error line, exit 2, not a traceback."""
    first, address, metrics = serve_process(store)
    try:
        port, metrics_port = address.rsplit(":", 1)[1], metrics.rsplit(":", 1)[1].split("/")[0]
        exe = str(Path(sys.executable).with_name("footprints"))
        base = [exe, "serve", "--store", str(store), "--backend", "onnxruntime"]
        cases = {
            "cannot listen on 127.0.0.1:" + port: ["--port", port, "--metrics-port", "-1"],
            "cannot serve metrics on 127.0.0.1:" + metrics_port: ["--port", "0", "--metrics-port", metrics_port],
            "no model server answered for amll: 127.0.0.1:1": [
                "--port",
                "0",
                "--metrics-port",
                "-1",
                "--model-servers",
                "127.0.0.1:1",
            ],
        }
        for message, args in cases.items():
            done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, cwd=REPO)
            ours = [line for line in done.stderr.splitlines() if line.startswith("footprints serve: error:")]
            assert done.returncode == 2 and len(ours) == 1 and message in ours[0], done.stderr[-2000:]
            assert "Traceback" not in done.stderr
        with FootprintsClient(address) as client:  # the first server still has its port, and answers
            assert {m.name for m in client.list_models()} == {"amll", "nus"}
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(60)
