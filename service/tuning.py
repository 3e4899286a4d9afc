"""Which engine serves a model on this machine, and how fast its windows run.

The engine is predicted from facts, never measured on the critical path:
OpenVINO (bf16 where the CPU computes bf16 natively and the model's bf16 masks passed
export's agreement check, fp32 elsewhere), except for graphs with scatter operations
(ONERA's index unpooling), which OpenVINO's CPU plugin runs about 7x slower than ONNX
Runtime (measured, ``benchmarks/engines.py``); without OpenVINO, ONNX Runtime. The same
facts give the same engine in every process, so a tile gets the same mask from
``segment``, ``serve`` and ``batch``.

What is measured is speed: seconds per window at the sides a tile may be cut into.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Backend
from .budget import half_the_ram
from .cpu import this_cpu
from .store import ONNX, ModelEntry
from .windows import window_for_count

# Tiles the measured sizes are aimed at (the benchmark's 5000 px), and the window
# counts per axis tried for them.
TUNED_TILE = 5000
TUNED_COUNTS = (2, 3, 4, 6, 9)
# OpenVINO operations its CPU plugin runs far slower than ONNX Runtime does.
SLOW_IN_OPENVINO = frozenset({"ScatterElementsUpdate", "ScatterNDUpdate", "ScatterUpdate"})


def cache_dir() -> Path:
    return Path(os.environ.get("FOOTPRINTS_CACHE") or Path.home() / ".cache" / "footprints")


@dataclass(frozen=True)
class Choice:
    engine: str  # "openvino" or "onnxruntime"
    precision: str  # "bf16" or "fp32"
    why: str


def _has_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def predicted_engine(entry: ModelEntry, precision: str = "auto") -> Choice:
    """The engine and precision the facts pick for ``entry`` on this CPU (see the module)."""
    from .backends.openvino_backend import checked_precision, graph_operations

    if not _has_openvino():
        if precision == "bf16":
            from .errors import InputError

            raise InputError("bf16 runs on OpenVINO, which is not installed")
        return Choice("onnxruntime", "fp32", "OpenVINO is not installed")
    slow = sorted(graph_operations(entry) & SLOW_IN_OPENVINO)
    if slow and precision != "bf16":
        return Choice("onnxruntime", "fp32", f"its graph has {', '.join(slow)}, which OpenVINO's CPU plugin runs slowly")
    chosen, why = checked_precision(entry, precision)
    return Choice("openvino", chosen, why)


def _versions() -> str:
    import onnxruntime

    try:
        import openvino

        ov = str(openvino.get_version())
    except ImportError:
        ov = "none"
    return f"onnxruntime {onnxruntime.__version__}, openvino {ov}"


def cache_key(entry: ModelEntry, engine: str, precision: str) -> str:
    return " | ".join([entry.manifest["files"][ONNX], this_cpu().key, _versions(), f"{engine} {precision}"])


def _cache_file() -> Path:
    return cache_dir() / "engines.json"


def _read_cache() -> dict[str, Any]:
    path = _cache_file()
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged cache only costs a new measurement
    return data if isinstance(data, dict) else {}


def cached_seconds(entry: ModelEntry, engine: str, precision: str) -> dict[int, float] | None:
    """Seconds per window by side, as measured here earlier (None: not yet)."""
    record = _read_cache().get(cache_key(entry, engine, precision))
    if not isinstance(record, dict) or "seconds" not in record:
        return None
    return {int(s): float(t) for s, t in record["seconds"].items()}


def window_crops(backend: Backend, side: int, batch: int = 1) -> list[np.ndarray]:
    """Inputs of one window of ``side`` (dual: output side, plus its 2x context)."""
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (batch, 3, side, side), dtype=np.uint8)]
    if backend.spec.mode == "dual":
        crops.append(rng.integers(0, 256, (batch, 3, 2 * side, 2 * side), dtype=np.uint8))
    return crops


def seconds_per_window(backend: Backend, side: int, repeats: int = 1) -> float:
    """Median seconds of ``repeats`` calls of one window, after a warm-up call (which
    compiles the shape)."""
    crops = window_crops(backend, side)
    backend.infer(crops)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend.infer(crops)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def tuned_sides(backend: Backend, budget: int) -> list[int]:
    """The window sizes a 5000-px tile may be cut into, within the memory budget."""
    spec = backend.spec
    sides = {spec.default_window(backend.device)}
    sides |= {window_for_count(spec, TUNED_TILE, n, 64) for n in TUNED_COUNTS}
    return sorted(s for s in sides if backend.window_bytes(s) <= budget)


def needs_measuring(entry: ModelEntry) -> bool:
    """Only plans of valid-convolution windows stitch to the same mask whatever their
    size, so only they are chosen by speed."""
    return entry.spec.mode == "large"


def measure(backend: Backend, entry: ModelEntry, budget: int | None = None) -> dict[int, float]:
    """Time ``backend`` at every side a 5000-px tile may be cut into and cache it."""
    seconds = {s: seconds_per_window(backend, s) for s in tuned_sides(backend, budget or half_the_ram())}
    known = _read_cache()
    known[cache_key(entry, backend.engine, backend.precision)] = {
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
