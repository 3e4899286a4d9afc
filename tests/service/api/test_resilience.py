"""A server no client can crash or starve, whose model faults stay with their model:
cancels at every stage, stalled and dripping uploads, per-client slots, damaged and
half-copied versions, and a store with nothing servable. Real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._pb import footprints_pb2 as pb
from service._pb import footprints_pb2_grpc as pb_grpc
from service.api.servicer import Limits
from service.client import FootprintsClient
from service.transport import ClientSecurity

from ...conftest import REPO, wait_until
from ..servers import CRS, TRANSFORM, RunningServer, config, in_process, raw_header, scrape, tile

HEALTH = health_pb2.HealthCheckResponse


def _idle(url: str) -> bool:
    """Nothing held: no tile in flight, no window or tile memory taken."""
    m = scrape(url)
    return (
        m["footprints_tiles_in_flight"] == 0
        and m["footprints_window_memory_bytes"] == 0
        and m["footprints_tile_memory_bytes"] == 0
    )


# ---- cancels ------------------------------------------------------------------


def _cancel_at(address: str, image: Path, stage: str) -> str:
    """Send ``image`` as GeoTIFF bytes and cancel at ``stage``; returns what the client saw."""
    data = image.read_bytes()
    height = 1200
    sent_header = threading.Event()
    hold = threading.Event()

    def requests():
        header = pb.TileHeader(model="amll", window=252, geotiff=pb.GeoTiffInput(size_bytes=len(data)))
        yield pb.SegmentTileRequest(header=header)
        if stage == "upload":
            yield pb.SegmentTileRequest(chunk=data[: len(data) // 2])
            sent_header.set()
            hold.wait(30)  # the rest never comes: the client cancels mid-upload
        yield pb.SegmentTileRequest(chunk=data)

    channel = grpc.insecure_channel(address)
    responses = pb_grpc.SegmentationStub(channel).SegmentTile(requests(), timeout=60)
    try:
        if stage == "upload":
            sent_header.wait(30)
            time.sleep(0.05)
            responses.cancel()
        rows = 0
        for reply in responses:
            if reply.WhichOneof("part") != "rows":
                continue
            rows = reply.rows.row_start + reply.rows.row_count
            if (
                (stage == "first rows")
                or (stage == "mid-stream" and rows >= height // 2)
                or (stage == "last rows" and rows == height)
            ):
                responses.cancel()
        return "finished"
    except grpc.RpcError as e:
        return e.code().name
    finally:
        hold.set()
        channel.close()


def test_a_cancel_at_any_stage_leaves_the_server_serving_and_nothing_held(store, tmp_path):
    """The crash this guards against was racy (a reader thread inside a GDAL read while
    the cancel closed the upload): each stage is cancelled three times, on a tile of
    many windows read from GeoTIFF bytes."""
    s = RunningServer(config(store))
    try:
        image = tile(tmp_path / "many.tif", 1200, 1200, seed=41)
        for stage in ("upload", "first rows", "mid-stream", "last rows"):
            for _ in range(3):
                assert _cancel_at(s.address, image, stage) == "CANCELLED", stage
                wait_until(lambda: _idle(s.metrics_url), 30, f"the tile cancelled at {stage} to let go of everything")
        counts = scrape(s.metrics_url)
        cancelled = counts['footprints_requests_total{code="CANCELLED",method="SegmentTile"}']
        # A cancel after the last rows may reach the server after it has sent its last
        # message and counted the call OK: the client still sees CANCELLED (its own).
        served = counts.get('footprints_requests_total{code="OK",method="SegmentTile"}', 0)
        assert 9 <= cancelled <= 12 and cancelled + served == 12, (cancelled, served)
        with FootprintsClient(s.address) as client:  # and it still serves, exactly
            client.segment_file(image, tmp_path / "m.tif", model="amll", window=252, progress=False, timeout=120)
        import rasterio

        with rasterio.open(tmp_path / "m.tif") as m:
            expected = np.where(in_process(store, "amll", image, 252) >= 0.5, 255, 0).astype(np.uint8)
            assert np.array_equal(m.read(1), expected)
    finally:
        s.stop()


# ---- clients that stall, drip or hog -------------------------------------------


def test_stalled_and_dripping_uploads_cannot_starve_a_normal_client(store, tmp_path):
    """Eight streams of one client (a header, then silence; or a byte every 0.3 s) get at
    most its two slots, each for at most the upload's total time; another client is
    served all along."""
    tokens = tmp_path / "tokens"
    tokens.write_text("attacker\nnormal\n")
    limits = Limits(max_tiles_in_flight=4, max_tiles_per_client=2, max_raster_side=6000, upload_idle_s=5.0, upload_s=1.5)
    s = RunningServer(config(store, limits=limits, tokens_file=tokens))
    stop = threading.Event()
    outcomes: list[str] = []

    def attack(drip: bool) -> None:
        def requests():
            yield pb.SegmentTileRequest(header=raw_header(400, 400))
            while not stop.is_set():
                if drip:
                    yield pb.SegmentTileRequest(chunk=b"\0")
                stop.wait(0.3)

        with FootprintsClient(s.address, ClientSecurity(token="attacker")) as bad:
            while not stop.is_set():
                try:
                    list(bad.stub.SegmentTile(requests(), timeout=30, metadata=bad.metadata))
                except grpc.RpcError as e:
                    if not stop.is_set():  # (at the end the streams stop short: truncated, by design)
                        outcomes.append(f"{e.code().name}: {e.details()}")

    attackers = [threading.Thread(target=attack, args=(i % 2 == 1,)) for i in range(8)]
    try:
        for t in attackers:
            t.start()
        wait_until(lambda: scrape(s.metrics_url)["footprints_tiles_in_flight"] == 2, 30, "the attacker to hold its slots")
        served = 0
        with FootprintsClient(s.address, ClientSecurity(token="normal"), timeout=60) as good:
            t_end = time.monotonic() + 4.0
            while time.monotonic() < t_end:
                mask, result = good.segment_array(np.zeros((3, 200, 200), np.uint8), CRS, TRANSFORM, model="amll", window=252)
                served += result.summary.height == 200
        assert served >= 3
    finally:
        stop.set()
        for t in attackers:
            t.join(60)
        s.stop()
    kinds = {o.split(":")[0] for o in outcomes}
    assert kinds <= {"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED"}
    assert any("upload too slow" in o for o in outcomes)  # the dripping ones, cut at their total time
    assert any("has 2 tiles in flight (limit 2 per client" in o for o in outcomes)


def test_a_stream_that_sends_no_header_takes_no_slot(store):
    limits = Limits(max_tiles_in_flight=1, max_tiles_per_client=1, max_raster_side=6000, upload_idle_s=3.0)
    s = RunningServer(config(store, limits=limits))
    stop = threading.Event()
    try:

        def silent():
            stop.wait(30)
            yield from ()

        with FootprintsClient(s.address) as client:
            silent_call = client.stub.SegmentTile(silent(), timeout=30)
            waiting = threading.Thread(target=lambda: [*silent_call], daemon=True)
            waiting.start()
            # The one slot is free while the silent stream waits, for this client too.
            mask, _ = client.segment_array(np.zeros((3, 200, 200), np.uint8), CRS, TRANSFORM, model="amll", window=252)
            assert mask.shape == (200, 200) and waiting.is_alive()
            silent_call.cancel()
    finally:
        stop.set()
        s.stop()


# ---- model faults ----------------------------------------------------------------


def _copy_version(root: Path, name: str, source: int, version: int) -> Path:
    folder = root / name / str(version)
    shutil.copytree(root / name / str(source), folder)
    return folder


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_damaged_versions_are_skipped_and_the_rest_of_the_store_serves(store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(store, root)
    _damage(_copy_version(root, "amll", 1, 2) / "model.onnx")  # the newest amll: corrupted graph
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{ not json")  # a model with nothing that loads
    s = RunningServer(config(root))
    try:
        with FootprintsClient(s.address) as client:
            infos = {m.name: m for m in client.list_models()}
            assert infos["amll"].state == "ready" and infos["amll"].version == 1  # the previous version serves
            (skip,) = infos["amll"].skipped
            assert skip.version == 2 and str(root / "amll" / "2" / "model.onnx") in skip.reason and "sha256" in skip.reason
            assert infos["nus"].state == "ready" and not infos["nus"].skipped
            assert infos["broken"].state == "failed" and "manifest.json" in infos["broken"].skipped[0].reason
            _, result = client.segment_array(np.zeros((3, 200, 200), np.uint8), CRS, TRANSFORM, model="amll", window=252)
            assert result.summary.model_version == 1
            with pytest.raises(grpc.RpcError) as err:
                client.segment_array(np.zeros((3, 200, 200), np.uint8), CRS, TRANSFORM, model="broken")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and "manifest.json" in err.value.details()
        assert _health(s.address, "") == HEALTH.SERVING
        assert _health(s.address, "footprints.v1.Segmentation/amll") == HEALTH.SERVING
        assert _health(s.address, "footprints.v1.Segmentation/broken") == HEALTH.NOT_SERVING
        m = scrape(s.metrics_url)
        assert m['footprints_model_versions_skipped_total{model="amll"}'] == 1
        assert m['footprints_model_versions_skipped_total{model="broken"}'] == 1
    finally:
        s.stop()


def test_a_half_copied_version_never_takes_the_working_one_down(store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(store, root)
    s = RunningServer(config(root))
    try:
        folder = _copy_version(root, "amll", 1, 5)
        whole = (folder / "model.onnx").read_bytes()
        (folder / "model.onnx").write_bytes(whole[: len(whole) // 3])  # caught mid-copy
        asyncio.run_coroutine_threadsafe(s.server.reload(), s.loop).result(60)
        with FootprintsClient(s.address) as client:
            (amll,) = [m for m in client.list_models() if m.name == "amll"]
            assert amll.version == 1 and [k.version for k in amll.skipped] == [5]
            _, result = client.segment_array(np.zeros((3, 200, 200), np.uint8), CRS, TRANSFORM, window=252)
            assert result.summary.model == "amll" and result.summary.model_version == 1  # the default still answers
            (folder / "model.onnx").write_bytes(whole)  # the copy completes
            asyncio.run_coroutine_threadsafe(s.server.reload(), s.loop).result(60)
            (amll,) = [m for m in client.list_models() if m.name == "amll"]
            assert amll.version == 5 and not amll.skipped and amll.versions == [5]
    finally:
        s.stop()


def test_a_store_with_nothing_servable_ends_in_one_line_exit_2(tmp_path):
    root = tmp_path / "store"
    for name in ("a", "b"):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "manifest.json").write_text(json.dumps({"name": name}))  # no geometry, no files
    exe = str(Path(sys.executable).with_name("footprints"))
    done = subprocess.run(
        [exe, "serve", "--store", str(root), "--port", "0", "--metrics-port", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    ours = [line for line in done.stderr.splitlines() if line.startswith("footprints serve: error:")]
    assert done.returncode == 2 and len(ours) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "nothing in" in ours[0] and str(root / "a" / "1" / "manifest.json") in ours[0] and "b v1" in ours[0]
