"""How fast a model's windows run on this machine: measured, cached, and read back.

The engine itself is never chosen by measurement (:mod:`service.engines.choice`). What
is measured is speed: seconds per window at the sides a tile may be cut into.
Only valid-convolution (``large``) models use it, to pick among window plans that all
stitch to the same mask; every other model's plan is fixed by its manifest. The
measurements are taken by ``footprints tune`` (ahead of time, as the Docker build
does) or by a server in a child process in the background (so their memory goes back
to the system when it ends), and cached per graph, CPU, core count, engine versions and
precision (``$FOOTPRINTS_CACHE``, default ``~/.cache/footprints``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.engines.base import Bundle, Engine
from service.machine import half_the_ram, this_cpu
from service.store.manifest import ONNX

# Tiles the measured sizes are aimed at (the benchmark's 5000 px), and the window
# counts per axis tried for them.
TUNED_TILE = 5000
TUNED_COUNTS = (2, 3, 4, 6, 9)


def cache_dir() -> Path:
    return Path(os.environ.get("FOOTPRINTS_CACHE") or Path.home() / ".cache" / "footprints")


def _versions() -> str:
    import onnxruntime

    try:
        import openvino

        ov = str(openvino.get_version())
    except ImportError:
        ov = "none"
    return f"onnxruntime {onnxruntime.__version__}, openvino {ov}"


def cache_key(entry: Bundle, engine: str, precision: str) -> str:
    return " | ".join([entry.manifest.files[ONNX], this_cpu().key, _versions(), f"{engine} {precision}"])


def _cache_file() -> Path:
    return cache_dir() / "engines.json"


def _read_cache() -> dict[str, Any]:
    path = _cache_file()
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged cache only costs a new measurement
    return data if isinstance(data, dict) else {}


def cached_seconds(entry: Bundle, engine: str, precision: str) -> dict[int, float]:
    """Seconds per window by side, as measured here earlier (empty: not yet)."""
    record = _read_cache().get(cache_key(entry, engine, precision))
    if not isinstance(record, dict) or "seconds" not in record:
        return {}
    return {int(s): float(t) for s, t in record["seconds"].items()}


def seconds_per_window(engine: Engine, side: int, repeats: int = 1) -> float:
    """Median seconds of ``repeats`` calls of one window, after a warm-up call (which
    compiles the shape)."""
    crops = engine.geometry.random_crops(1, side)
    return median_seconds(lambda: engine.infer(crops), repeats)


def median_seconds(call: Callable[[], object], repeats: int = 1) -> float:
    """Median seconds of ``repeats`` calls of ``call``, after one warm-up call (kernels
    chosen, memory allocated, shapes compiled)."""
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def tuned_sides(engine: Engine, budget: int) -> list[int]:
    """The window sizes a 5000-px tile may be cut into, within the memory budget."""
    geometry = engine.geometry
    sides = {geometry.default_window(engine.device)}
    sides |= {geometry.window_for_count(TUNED_TILE, n) for n in TUNED_COUNTS}
    return sorted(s for s in sides if engine.window_bytes(s) <= budget)


def needs_measuring(entry: Bundle) -> bool:
    """Only plans whose windows stitch to the same mask whatever their size (valid
    convolutions) are chosen by speed."""
    return not entry.geometry.plan_fixed


def measure(engine: Engine, entry: Bundle, budget: int | None = None) -> dict[int, float]:
    """Time ``engine`` at every side a 5000-px tile may be cut into and cache it."""
    seconds = {s: seconds_per_window(engine, s) for s in tuned_sides(engine, budget or half_the_ram())}
    known = _read_cache()
    known[cache_key(entry, engine.engine, engine.precision)] = {
        "model": f"{entry.name} v{entry.version}",
        "seconds": {str(s): t for s, t in seconds.items()},
    }
    path = _cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=1))
    tmp.replace(path)  # two processes measuring at once each write a whole file
    return seconds


def measure_in_child(store: Path, models: list[str], precision: str, log_file: Path | None = None) -> subprocess.Popen:
    """``footprints tune`` for ``models`` in a child process at the lowest CPU priority,
    so a server keeps serving meanwhile and the memory the measuring takes goes back to
    the system when it ends."""
    command = [sys.executable, "-m", "service.cli", "tune", "--store", str(store), "--precision", precision,
               "--models", ",".join(models)]  # fmt: skip
    out = open(log_file, "a") if log_file else subprocess.DEVNULL  # noqa: SIM115 (the child owns it)
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=lambda: os.nice(19))
