"""``footprints batch`` on a local Ray with 2 workers: masks equal to ``segment`` tile
by tile, a worker killed mid-run, an interrupted run resumed, a building that straddles
two tiles as one polygon of the city layer, and bad tiles reported per tile."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from pyogrio.raw import read
from rasterio.transform import from_origin
from scipy import ndimage

from service.batch.stac import validate_offline
from service.engines import open_engine
from service.rasters import RGBRaster, write_geotiff
from service.store.repository import ModelStore
from service.tiling.engine import EngineConfig, TilingEngine

from ...conftest import REPO, run_cli, wait_until

pytest.importorskip("ray", reason="footprints batch runs on Ray: pip install '.[batch]'")

CRS = "EPSG:32616"
PX = 0.3
SIDE = 400
ARGS = ["--backend", "onnxruntime", "--window", "252", "--workers", "2"]


def _blobs(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth RGB blobs: the test model's masks come out as large regions, so some
    cross the seam between the two halves of the first image."""
    rng = np.random.default_rng(seed)
    low = rng.normal(0, 1, (3, h // 20 + 2, w // 20 + 2))
    big = ndimage.zoom(low, (1, 20, 20), order=3)[:, :h, :w]
    return np.clip(128 + 60 * big, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    """6 tiles: ``seam1`` and ``seam2`` are the two halves of one image side by side
    (so buildings straddle them); four more elsewhere."""
    folder = tmp_path_factory.mktemp("city")
    x0, y0 = 500_000.0, 4_600_000.0
    pair = _blobs(SIDE, 2 * SIDE, 1)
    for i in range(2):
        write_geotiff(
            folder / f"seam{i + 1}.tif",
            pair[:, :, i * SIDE : (i + 1) * SIDE],
            crs=CRS,
            transform=from_origin(x0 + i * SIDE * PX, y0, PX, PX),
        )
    for i in range(4):
        write_geotiff(
            folder / f"town{i + 1}.tif",
            _blobs(SIDE, SIDE, 10 + i),
            crs=CRS,
            transform=from_origin(x0, y0 - (i + 2) * SIDE * PX, PX, PX),
        )
    return folder


def _expected(store, image: Path, tta_passes: int | None = None) -> np.ndarray:
    config = EngineConfig(window=252, tta_passes=tta_passes)
    engine = TilingEngine(open_engine(ModelStore(store).get("amll"), "onnxruntime"), config)
    with RGBRaster(image) as src:
        return np.where(engine.probabilities(src) >= 0.5, 255, 0).astype(np.uint8)


def _mask(out: Path, name: str) -> np.ndarray:
    with rasterio.open(out / "masks" / f"{name}.tif") as m:
        return m.read(1)


def _stop_ray() -> None:
    subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], capture_output=True, timeout=120)


def test_a_city_gives_segments_masks_one_layer_and_the_seam_joined(store, city, tmp_path):
    out = tmp_path / "out"
    done = run_cli("batch", "--input", str(city), "--out", str(out), "--store", str(store), *ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 tiles segmented, 0 already done, 0 failed" in done.stdout
    for image in sorted(city.glob("*.tif")):
        assert np.array_equal(_mask(out, image.stem), _expected(store, image)), image.stem
        with rasterio.open(out / "masks" / f"{image.stem}.tif") as m, rasterio.open(image) as src:
            assert m.crs == src.crs and m.transform == src.transform  # georeferenced like its tile
    ledger = json.loads((out / "batch-manifest.json").read_text())["tiles"]
    assert set(ledger) == {p.stem for p in city.glob("*.tif")} and all(r["model"] == "amll:1" for r in ledger.values())
    # Each tile's buildings carry their confidence and the model version.
    features = json.loads((out / "polygons" / "seam1.geojson").read_text())["features"]
    assert features and all(f["properties"]["model"] == "amll" and 0 <= f["properties"]["confidence"] <= 1 for f in features)

    # The same city layer as GeoParquet 1.1: WKB, its CRS as PROJJSON, the same buildings.
    import pyarrow.parquet as pq

    table = pq.read_table(out / "buildings.parquet")
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["columns"]["geometry"]["crs"]["id"] == {"authority": "EPSG", "code": 32616}
    parquet = sorted(shapely.from_wkb(g).wkt for g in table.column("geometry").to_pylist())
    assert parquet == sorted(shapely.from_wkb(g).wkt for g in read(str(out / "buildings.gpkg"))[2])

    # Provenance: a STAC Collection with an Item per tile and one for the model, valid
    # against STAC's core schemas and, for the model, the MLM extension's models.
    assert f"STAC collection {out / 'stac' / 'collection.json'}" in done.stdout
    assert validate_offline(out / "stac" / "collection.json") == 1 + 1 + 6
    model = json.loads((out / "stac" / "model-amll-1" / "model-amll-1.json").read_text())
    assert model["properties"]["mlm:name"] == "amll:1" and model["properties"]["mlm:architecture"] == "amll_unet"
    assert [c["name"] for c in model["properties"]["mlm:output"][0]["classification:classes"]] == ["background", "building"]
    graph = model["assets"]["model"]
    assert "mlm:model" in graph["roles"] and Path(graph["href"]).resolve() == (store / "amll" / "1" / "model.onnx").resolve()
    item_path = out / "stac" / "seam1" / "seam1.json"
    item = json.loads(item_path.read_text())
    assert item["properties"]["footprints:model"] == "amll:1" and item["properties"]["gsd"] == pytest.approx(PX)
    derived = [link for link in item["links"] if link["rel"] == "derived_from"]
    assert [(item_path.parent / link["href"]).resolve() for link in derived] == [
        (out / "stac" / "model-amll-1" / "model-amll-1.json").resolve()
    ]
    assert item["properties"]["proj:code"] == CRS and item["properties"]["proj:shape"] == [SIDE, SIDE]
    assert (item_path.parent / item["assets"]["mask"]["href"]).resolve() == (out / "masks" / "seam1.tif").resolve()
    assert item["assets"]["mask"]["type"].endswith("profile=cloud-optimized")
    assert Path(item["assets"]["source"]["href"]).resolve() == (city / "seam1.tif").resolve()
    assert {"buildings", "source", "mask"} <= set(item["assets"])

    # The seam: every building of the two halves' mosaic that crosses it is one polygon
    # of the layer, joined from both tiles.
    mosaic = np.concatenate([_mask(out, "seam1"), _mask(out, "seam2")], axis=1) > 0
    labels, _ = ndimage.label(mosaic)  # 4-connected, as GDAL traces
    crossing = set(np.unique(labels[:, SIDE - 1])) & set(np.unique(labels[:, SIDE])) - {0}
    crossing = {c for c in crossing if np.count_nonzero(labels == c) * PX * PX >= 10.0}  # well over the 4 m^2 kept
    assert len(crossing) >= 2, "the fixture should put buildings across the seam"
    _, _, geometry, fields = read(str(out / "buildings.gpkg"), layer="buildings")
    polys = [shapely.from_wkb(g) for g in geometry]
    tree = shapely.STRtree(polys)
    for c in crossing:
        core = ndimage.binary_erosion(labels == c)  # pixels away from the outline simplification moves
        rows, cols = np.nonzero(core if core.any() else labels == c)
        points = shapely.points(500_000.0 + (cols + 0.5) * PX, 4_600_000.0 - (rows + 0.5) * PX)
        hits = {int(k) for k in tree.query(points, predicate="within")[1]}
        assert len(hits) == 1, (c, len(hits))
        assert fields[0][hits.pop()] == "seam1,seam2"

    # Run again with references: nothing is redone, and the benchmark's table is printed
    # (references equal to the masks but one flipped tile: IoU 100 for one city, not the other).
    gt = tmp_path / "gt"
    gt.mkdir()
    for image in city.glob("*.tif"):
        mask = _mask(out, image.stem)
        write_geotiff(
            gt / image.name, (255 - mask if image.stem == "town1" else mask)[None], crs=CRS, transform=from_origin(0, 0, PX, PX)
        )
    again = run_cli("batch", "--input", str(city), "--out", str(out), "--store", str(store), *ARGS, "--gt", str(gt))
    assert again.returncode == 0 and "0 tiles segmented, 6 already done" in again.stdout, again.stderr[-2000:]
    row = next(line for line in again.stdout.splitlines() if line.startswith("| footprints batch"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "100.00 / 100.00" and cells[2] != "100.00 / 100.00"  # seam, town


def _descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (from /proc)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def _listening(pids: set[int]) -> list[str]:
    """The addresses the processes ``pids`` listen on (TCP)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[3] for line in out.splitlines() if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids]


def test_a_worker_killed_mid_run_and_the_run_completes(store, city, tmp_path):
    """And the embedded Ray listens on loopback only, with no dashboard."""
    out = tmp_path / "out"
    exe = str(Path(sys.executable).with_name("footprints"))
    proc = subprocess.Popen([exe, "batch", "--input", str(city), "--out", str(out), "--store", str(store), *ARGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip
    try:
        pids = wait_until(
            lambda: (out / "workers.json").is_file() and json.loads((out / "workers.json").read_text())["pids"],
            120,
            "the workers",
        )
        if shutil.which("ss"):
            addresses = _listening(_descendants(proc.pid))
            assert addresses and all(a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")) for a in addresses), addresses
            assert not any(a.endswith(":8265") for a in addresses)  # no dashboard
        os.kill(pids[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
        _stop_ray()
    assert proc.returncode == 0, stderr[-3000:]
    assert "6 tiles segmented" in stdout and "0 failed" in stdout
    for image in sorted(city.glob("*.tif")):
        assert np.array_equal(_mask(out, image.stem), _expected(store, image)), image.stem


def test_an_interrupted_run_resumes_with_only_what_is_missing_or_stale(store, city, tmp_path):
    out = tmp_path / "out"
    exe = str(Path(sys.executable).with_name("footprints"))
    proc = subprocess.Popen([exe, "batch", "--input", str(city), "--out", str(out), "--store", str(store), *ARGS[:-1], "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True)  # fmt: skip
    ledger = out / "batch-manifest.json"
    try:
        wait_until(lambda: ledger.is_file() and len(json.loads(ledger.read_text())["tiles"]) >= 2, 300, "two finished tiles")
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray, mid-tile
        proc.wait(30)
    finally:
        _stop_ray()
    first = json.loads(ledger.read_text())["tiles"]
    assert 2 <= len(first) < 6
    stamps = {n: (out / "masks" / f"{n}.tif").stat().st_mtime_ns for n in first}
    (out / "masks" / ".town9.4242.partial.tif").write_bytes(b"left by a killed worker")
    done = run_cli("batch", "--input", str(city), "--out", str(out), "--store", str(store), *ARGS)
    assert not [p.name for sub in ("masks", "polygons", "probabilities") for p in (out / sub).glob(".*.partial.*")]
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{6 - len(first)} tiles segmented, {len(first)} already done" in done.stdout
    assert all((out / "masks" / f"{n}.tif").stat().st_mtime_ns == t for n, t in stamps.items())  # not redone
    for image in sorted(city.glob("*.tif")):
        assert np.array_equal(_mask(out, image.stem), _expected(store, image)), image.stem
    # Stale: a changed input and a damaged output are redone, and nothing else.
    os.utime(city / "town1.tif", ns=(time.time_ns(), time.time_ns()))
    (out / "masks" / "town2.tif").write_bytes(b"half")
    done = run_cli("batch", "--input", str(city), "--out", str(out), "--store", str(store), *ARGS)
    assert "2 tiles segmented, 4 already done" in done.stdout, done.stdout
    assert np.array_equal(_mask(out, "town2"), _expected(store, city / "town2.tif"))
    # Other settings make other outputs: a rerun with 2-pass TTA redoes every tile.
    done = run_cli("batch", "--input", str(city), "--out", str(out), "--store", str(store), *ARGS, "--tta-passes", "2")
    assert "6 tiles segmented, 0 already done" in done.stdout, done.stdout
    assert np.array_equal(_mask(out, "town3"), _expected(store, city / "town3.tif", tta_passes=2))
    assert not np.array_equal(_mask(out, "town3"), _expected(store, city / "town3.tif"))


def test_bad_tiles_are_reported_and_do_not_stop_the_others(store, city, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in sorted(city.glob("town*.tif"))[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.tif").write_bytes(b"this is not a GeoTIFF")
    write_geotiff(folder / "gray.tif", _blobs(SIDE, SIDE, 3)[:1], crs=CRS, transform=from_origin(0, 0, PX, PX))
    out = tmp_path / "out"
    done = run_cli("batch", "--input", str(folder), "--out", str(out), "--store", str(store), *ARGS)
    assert done.returncode == 1  # some tiles failed: said, and the exit status says so
    assert "2 tiles segmented, 0 already done, 2 failed" in done.stdout
    lines = {line.split(":")[0].strip(): line for line in done.stdout.splitlines() if line.strip().startswith("failed")}
    assert set(lines) == {"failed broken", "failed gray"} and "1 band" in lines["failed gray"]
    assert "Traceback" not in done.stderr
    assert sorted(p.stem for p in (out / "masks").glob("*.tif")) == ["town1", "town2"]


def test_a_two_node_ray_cluster_loses_a_node_mid_run_and_the_run_completes(store, city, tmp_path):
    """A real cluster on this machine: a head (``ray start --head``) and a second node with
    its own CPU, ``footprints batch --ray-address`` with a worker on each; the second
    node is killed mid-run, its tile goes to the survivor, and every mask equals segment."""
    ray = str(Path(sys.executable).with_name("ray"))
    port = "6391"
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),  # the cluster's token: every node and driver needs it
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats", "--block"]
    head = subprocess.Popen([ray, "start", "--head", "--port", port, "--include-dashboard", "false", *common],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    node = None
    out = tmp_path / "out"
    try:
        status = [ray, "status", "--address", f"127.0.0.1:{port}"]
        wait_until(lambda: subprocess.run(status, env=env, capture_output=True, timeout=60).returncode == 0, 120, "the head")
        node = subprocess.Popen([ray, "start", "--address", f"127.0.0.1:{port}", *common], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        wait_until(
            lambda: (
                "2.0 CPU"
                in subprocess.run(status, env=env, capture_output=True, text=True, timeout=60).stdout.replace("0.0/", "")
            ),
            120,
            "the second node to join",
        )
        node_pids = _descendants(node.pid)
        exe = str(Path(sys.executable).with_name("footprints"))
        args = ["--backend", "onnxruntime", "--window", "252", "--ray-address", f"127.0.0.1:{port}"]
        batch = subprocess.Popen([exe, "batch", "--input", str(city), "--out", str(out), "--store", str(store), *args],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)  # fmt: skip
        pids = wait_until(
            lambda: (out / "workers.json").is_file() and json.loads((out / "workers.json").read_text())["pids"],
            180,
            "the workers",
        )
        assert len(pids) == 2 and len(set(pids) & _descendants(node.pid)) == 1  # one worker on each node
        wait_until(lambda: any((out / "masks").glob("*.tif")) if (out / "masks").is_dir() else False, 180, "a first tile")
        os.killpg(node.pid, signal.SIGKILL)  # the second node goes away, its worker with it
        for pid in node_pids | _descendants(node.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stdout, stderr = batch.communicate(timeout=600)
        assert batch.returncode == 0, stderr[-3000:]
        assert "6 tiles segmented" in stdout and "0 failed" in stdout
    finally:
        for proc in (node, head):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
    for image in sorted(city.glob("*.tif")):
        assert np.array_equal(_mask(out, image.stem), _expected(store, image)), image.stem


def test_stac_validation_refuses_an_mlm_item_without_its_required_fields(tmp_path):
    """The offline check is a check: an MLM item missing its inputs, or its model asset, is refused."""
    import pydantic
    import pystac

    def catalogue(props: dict, roles: list[str]) -> Path:
        from stac_model.schema import MLModelExtension

        col = pystac.Collection(
            "c", "d", pystac.Extent(pystac.SpatialExtent([[0, 0, 1, 1]]), pystac.TemporalExtent([[None, None]]))
        )
        item = pystac.Item(
            "m", None, None, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), props, stac_extensions=[MLModelExtension.get_schema_uri()]
        )
        item.add_asset("g", pystac.Asset("g.onnx", roles=roles))
        col.add_item(item)
        folder = tmp_path / f"cat{len(list(tmp_path.iterdir()))}"
        col.normalize_hrefs(str(folder))
        col.save(pystac.CatalogType.SELF_CONTAINED)
        return folder / "collection.json"

    whole = {
        "mlm:name": "x",
        "mlm:architecture": "unet",
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:input": [],
        "mlm:output": [],
    }
    assert validate_offline(catalogue(whole, ["mlm:model"])) == 2
    with pytest.raises(pydantic.ValidationError, match="input"):
        validate_offline(catalogue({k: v for k, v in whole.items() if k != "mlm:input"}, ["mlm:model"]))
    with pytest.raises(pystac.STACValidationError, match="mlm:model"):
        validate_offline(catalogue(whole, ["data"]))
