"""The benchmark scripts still run: they live beside a script named like the service
package once did, and a shadowed import there went unnoticed until a run was wanted.
Speed itself is never asserted here (see the scripts' reports)."""

import json
import subprocess
import sys

from ..conftest import REPO


def test_tiling_benchmark_runs_a_small_tile_and_writes_its_report(tmp_path):
    out = tmp_path / "tiling.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/tiling.py"), "--size", "256", "--configs", "nus-dual-384", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["config"] == "nus-dual-384" and row["windows"] >= 1 and row["seconds"] > 0
    assert report["tile_px"] == 256 and report["malloc_env"]["MALLOC_MMAP_MAX_"] == "0"
    assert "nus-dual-384" in done.stdout and "out_mpx_per_s" in done.stdout  # the printed table


def test_serving_benchmark_imports_and_explains_itself():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/serving.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--throughput-size" in done.stdout
