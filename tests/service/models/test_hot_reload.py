"""Hot model changes: version folders added to or removed from the store while
serving are picked up (poll or SIGHUP); tiles finish on the version they started on,
and no request fails during the switch."""

from __future__ import annotations

import shutil
import signal
import threading

import numpy as np
import rasterio

from service.client import FootprintsClient

from ...conftest import wait_until
from ..servers import CRS, TRANSFORM, RunningServer, config, in_process, scrape, serve_process, tile


def _roll_out(root, name: str, source: int, version: int) -> None:
    """Copy a version folder in under a hidden name, then rename it into place: the
    store never shows a half-copied version."""
    staging = root / name / f".incoming-{version}"
    shutil.copytree(root / name / str(source), staging)
    staging.rename(root / name / str(version))


def _newest(address: str) -> int:
    with FootprintsClient(address) as client:
        return next(m.version for m in client.list_models() if m.name == "amll")


def test_a_version_added_while_serving_takes_new_tiles_while_the_old_one_finishes(store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(store, root)
    s = RunningServer(config(root, watch_store_s=0.1, max_batch=1))
    try:
        image = tile(tmp_path / "long.tif", 1800, 1800, seed=31)  # 64 windows, one at a time: seconds
        long: dict = {}

        def run_long() -> None:
            with FootprintsClient(s.address) as client:
                long["r"] = client.segment_file(
                    image, tmp_path / "long-mask.tif", model="amll", window=252, progress=False, timeout=300
                )

        failures: list[Exception] = []
        versions: list[int] = []
        stop = threading.Event()

        def keep_asking() -> None:  # small tiles all through the switch
            with FootprintsClient(s.address) as client:
                while not stop.is_set():
                    try:
                        _, r = client.segment_array(np.zeros((3, 200, 200), np.uint8), CRS, TRANSFORM, window=252, timeout=60)
                        versions.append(r.summary.model_version)
                    except Exception as e:
                        failures.append(e)

        t_long = threading.Thread(target=run_long)
        t_long.start()
        wait_until(
            lambda: scrape(s.metrics_url).get('footprints_windows_total{model="amll/1"}', 0) > 0, 60, "the long tile on v1"
        )
        t_small = threading.Thread(target=keep_asking)
        t_small.start()
        _roll_out(root, "amll", 1, 2)
        wait_until(lambda: _newest(s.address) == 2, 60, "version 2 to be served")
        assert t_long.is_alive()  # the v1 tile is still running...
        with FootprintsClient(s.address) as client:
            _, fresh = client.segment_array(np.zeros((3, 200, 200), np.uint8), CRS, TRANSFORM, window=252)
        assert fresh.summary.model_version == 2  # ...while new tiles go to v2
        t_long.join(300)
        assert long["r"].summary.model_version == 1
        with rasterio.open(tmp_path / "long-mask.tif") as m:
            expected = np.where(in_process(root, "amll", image, 252) >= 0.5, 255, 0).astype(np.uint8)
            assert np.array_equal(m.read(1), expected)
        loaded = 'footprints_model_loaded{backend="onnxruntime",mode="large",model="amll",version="%d"}'
        wait_until(lambda: loaded % 1 not in scrape(s.metrics_url), 30, "v1 to be unloaded after its last tile")
        # Rollback: remove the folder, v1 serves again.
        shutil.rmtree(root / "amll" / "2")
        wait_until(lambda: _newest(s.address) == 1, 60, "the rollback to version 1")
        stop.set()
        t_small.join(60)
        assert not failures and {1, 2} <= set(versions)
    finally:
        s.stop()


def test_sighup_reloads_the_store(store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(store, root)
    proc, address, _ = serve_process(root)
    try:
        assert _newest(address) == 1
        _roll_out(root, "amll", 1, 3)
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: _newest(address) == 3, 60, "version 3 after SIGHUP")
        with FootprintsClient(address) as client:
            _, r = client.segment_array(np.zeros((3, 200, 200), np.uint8), CRS, TRANSFORM, window=252)
        assert r.summary.model_version == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
