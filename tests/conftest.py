"""Shared fixtures: small GeoTIFFs in the Inria layout, written by the project itself."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from rasterio.transform import from_origin

from service.rasters import write_geotiff

REPO = Path(__file__).resolve().parents[1]
# Engine measurements (service.tuning) go to a folder of this test session, inherited by
# the servers and CLIs the tests start: no test sees another machine's (or run's) cache.
os.environ["FOOTPRINTS_CACHE"] = tempfile.mkdtemp(prefix="footprints-test-cache-")
REAL_OAM = REPO.parent / "shared" / "data" / "real-oam"
UTM = "EPSG:32616"


def write_mask(path: Path, mask: np.ndarray, origin=(500_000.0, 4_600_000.0)) -> Path:
    """A 1-band uint8 mask GeoTIFF at 0.3 m in UTM."""
    write_geotiff(path, mask.astype(np.uint8), crs=UTM, transform=from_origin(*origin, 0.3, 0.3))
    return path


def write_image(path: Path, rgb: np.ndarray, origin=(500_000.0, 4_600_000.0)) -> Path:
    write_geotiff(path, rgb.astype(np.uint8), crs=UTM, transform=from_origin(*origin, 0.3, 0.3))
    return path


T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str, poll: float = 0.02) -> T:
    """Poll ``condition`` until it returns something truthy (returned), or fail after
    ``timeout`` seconds saying what was awaited. Tests wait on conditions, never on
    fixed sleeps."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``footprints`` console script the way a user does."""
    exe = Path(sys.executable).with_name("footprints")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, env={**os.environ}, cwd=cwd)


@pytest.fixture(scope="session")
def tiny_cities(tmp_path_factory) -> Path:
    """Two train and one test synthetic city, two 256-px tiles each."""
    from training.synthetic import synthesize

    out = tmp_path_factory.mktemp("cities")
    synthesize(out, size=256, tiles_per_city=2, seed=3, cities=["ashford", "brookline", "fairhaven"], progress=False)
    return out


@pytest.fixture(scope="session")
def real_oam() -> Path:
    if not REAL_OAM.is_dir():
        pytest.skip(f"real imagery not found at {REAL_OAM} (shared/ sits beside the repository)")
    return REAL_OAM
