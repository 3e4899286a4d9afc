"""One tile, one mask: a blended (overlap-window) model's mask is the same, bit for bit,
from ``segment`` in-process, ``segment`` on one core, ``serve``, the ``--model-servers``
front end and ``batch``, each with its default engine and plan; so are a 0.6 m tile's
probabilities, which every path resamples to the model's 0.3 m and back."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

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
    coarse = tile(tmp_path / "city2.tif", 700, 760, seed=19)
    with rasterio.open(coarse, "r+") as ds:  # 0.6 m: 1400 x 1520 for the model, 2 x 2 windows
        ds.transform = ds.transform @ Affine.scale(2)
    masks: dict[str, np.ndarray] = {}
    resampled: dict[str, np.ndarray] = {}

    done = run_cli("segment", str(image), "-o", str(tmp_path / "segment.tif"), "--store", str(blended_store))
    assert done.returncode == 0, done.stderr
    assert "windows: 4" in done.stdout
    masks["segment"] = _mask(tmp_path / "segment.tif")
    probs = tmp_path / "segment-2-probabilities.tif"
    done = run_cli("segment", str(coarse), "-o", str(tmp_path / "segment-2.tif"), "--probabilities", str(probs),
                   "--store", str(blended_store))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "windows: 4" in done.stdout and "resample_factor: 2.0000" in done.stdout
    resampled["segment"] = _mask(probs)

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
            done = run_cli("segment", str(coarse), "-o", str(out), "--probabilities", str(probs), "--server", address)
            assert done.returncode == 0, done.stderr
            resampled[name] = _mask(probs)
    finally:
        for proc in (front, model_server):
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

    pytest.importorskip("ray", reason="footprints batch runs on Ray: pip install '.[batch]'")
    city = tmp_path / "city"
    city.mkdir()
    shutil.copy(image, city / image.name)
    shutil.copy(coarse, city / coarse.name)
    done = run_cli(
        "batch", "--input", str(city), "--out", str(tmp_path / "batch"), "--store", str(blended_store), "--workers", "2",
        "--probabilities",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    masks["batch"] = _mask(tmp_path / "batch" / "masks" / image.name)
    resampled["batch"] = _mask(tmp_path / "batch" / "probabilities" / coarse.name)

    assert resampled["segment"].min() < resampled["segment"].max()
    for tile_masks in (masks, resampled):
        reference = tile_masks["segment"]
        assert 0 < np.count_nonzero(reference)
        for name, mask in tile_masks.items():
            assert np.array_equal(mask, reference), f"{name}: {np.count_nonzero(mask != reference)} pixels differ"
    assert masks["segment"].min() == 0 and resampled["segment"].shape == (700, 760)
