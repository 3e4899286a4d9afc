"""One tile, one mask: a blended (overlap-window) model's mask is the same, bit for bit,
from ``segment`` in-process, ``segment`` on one core, ``serve``, the ``--model-servers``
front end and ``batch``, each with its default engine and plan."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import rasterio

from service.store.repository import ModelStore

from ..conftest import run_cli
from .servers import serve_process, small_effnet_store, tile


@pytest.fixture(scope="module")
def blended_store(tmp_path_factory) -> Path:
    return small_effnet_store(tmp_path_factory.mktemp("blended-store"), "blended", seed=7)


def _mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as m:
        return m.read(1)


def test_every_path_and_core_count_gives_the_same_mask(blended_store, tmp_path):
    spec = ModelStore(blended_store).get("blended").geometry
    assert spec.plan_fixed and spec.default_window("cpu") == spec.default_window("cuda") == 1376
    image = tile(tmp_path / "city1.tif", 1700, 1600, seed=17)  # 2 x 2 windows, blended where they meet
    masks: dict[str, np.ndarray] = {}

    done = run_cli("segment", str(image), "-o", str(tmp_path / "segment.tif"), "--store", str(blended_store))
    assert done.returncode == 0, done.stderr
    assert "windows: 4" in done.stdout
    masks["segment"] = _mask(tmp_path / "segment.tif")

    exe = shutil.which("taskset")
    if exe:
        import subprocess
        import sys

        footprints = str(Path(sys.executable).with_name("footprints"))
        one = subprocess.run([exe, "-c", "0", footprints, "segment", str(image), "-o", str(tmp_path / "one-core.tif"),
                              "--store", str(blended_store)], capture_output=True, text=True, timeout=300)  # fmt: skip
        assert one.returncode == 0, one.stderr
        masks["segment on one core"] = _mask(tmp_path / "one-core.tif")

    model_server, ms_address, _ = serve_process(blended_store, "--backend", "auto")
    front, front_address, _ = serve_process(blended_store, "--backend", "auto", "--model-servers", ms_address)
    try:
        for name, address in (("serve", ms_address), ("front end", front_address)):
            out = tmp_path / f"{name.replace(' ', '-')}.tif"
            done = run_cli("segment", str(image), "-o", str(out), "--server", address)
            assert done.returncode == 0, done.stderr
            masks[name] = _mask(out)
    finally:
        for proc in (front, model_server):
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

    pytest.importorskip("ray", reason="footprints batch runs on Ray: pip install '.[batch]'")
    city = tmp_path / "city"
    city.mkdir()
    shutil.copy(image, city / image.name)
    done = run_cli(
        "batch", "--input", str(city), "--out", str(tmp_path / "batch"), "--store", str(blended_store), "--workers", "2"
    )
    assert done.returncode == 0, done.stderr
    masks["batch"] = _mask(tmp_path / "batch" / "masks" / image.name)

    reference = masks["segment"]
    assert 0 < np.count_nonzero(reference) < reference.size
    for name, mask in masks.items():
        assert np.array_equal(mask, reference), f"{name}: {np.count_nonzero(mask != reference)} pixels differ"
