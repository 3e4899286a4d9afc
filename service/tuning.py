"""The fastest engine, and its speed per window size, measured on this machine once.

``--backend auto`` (the default) times every engine this machine may run a model on
(ONNX Runtime fp32, OpenVINO fp32, and OpenVINO bf16 where the CPU has it and the
model's bf16 masks passed export's agreement check) on one window of the model's
default size, keeps the fastest, and times that one at the window sizes a tile may
be cut into. The result is cached per model graph, CPU, core count and engine
version (``$FOOTPRINTS_CACHE``, default ``~/.cache/footprints``), so a second start
measures nothing; the tiler picks each tile's windows from those seconds.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
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
ENGINES = (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))


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


def _key(entry: ModelEntry, precision: str) -> str:
    return " | ".join([entry.manifest["files"][ONNX], this_cpu().key, _versions(), f"precision {precision}"])


def window_crops(backend: Backend, side: int, batch: int = 1) -> list[np.ndarray]:
    """Inputs of one window of ``side`` (dual: output side, plus its 2x context)."""
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (batch, 3, side, side), dtype=np.uint8)]
    if backend.spec.mode == "dual":
        crops.append(rng.integers(0, 256, (batch, 3, 2 * side, 2 * side), dtype=np.uint8))
    return crops


def seconds_per_window(backend: Backend, side: int, repeats: int = 1, batch: int = 1) -> float:
    """Median seconds per window of ``repeats`` calls of ``batch`` windows, after one
    warm-up call (which compiles the shape)."""
    crops = window_crops(backend, side, batch)
    backend.infer(crops)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend.infer(crops)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch


def tuned_sides(backend: Backend, budget: int) -> list[int]:
    """The window sizes a 5000-px tile may be cut into, within the memory budget."""
    spec = backend.spec
    sides = {spec.default_window(backend.device)}
    sides |= {window_for_count(spec, TUNED_TILE, n, 64) for n in TUNED_COUNTS}
    return sorted(s for s in sides if backend.window_bytes(s) <= budget)


def candidates(entry: ModelEntry, precision: str) -> list[tuple[str, str]]:
    """(engine, precision) pairs to time: what is installed, allowed and asked for."""
    from .backends.openvino_backend import checked_precision

    out = [("onnxruntime", "fp32")] if precision in ("auto", "fp32") else []
    try:
        import openvino  # noqa: F401
    except ImportError:
        return out
    ov_precision, _ = checked_precision(entry, precision)
    out.append(("openvino", "fp32"))
    if ov_precision == "bf16":
        out.append(("openvino", "bf16"))
    return [c for c in out if precision == "auto" or c[1] == precision]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # stdout is the server's "serving on" line


def open_fastest(entry: ModelEntry, precision: str = "auto", budget: int | None = None, log=_stderr) -> Backend:
    """The fastest engine for ``entry`` on this machine, with its ``window_seconds``."""
    from . import backends

    cache = cache_dir() / "engines.json"
    key = _key(entry, precision)
    known: dict[str, Any] = json.loads(cache.read_text()) if cache.is_file() else {}
    record = known.get(key)
    if record is None:
        reference: dict[str, float] = {}
        side = entry.spec.default_window("cpu")
        fastest: Backend | None = None
        best = ""
        for engine, prec in candidates(entry, precision):
            candidate = backends.open_backend(entry, engine, precision=prec)
            name = f"{engine}-{prec}"
            reference[name] = seconds_per_window(candidate, side, repeats=2)
            if fastest is None or reference[name] < reference[best]:
                if fastest is not None:
                    fastest.close()
                fastest, best = candidate, name
            else:
                candidate.close()  # only the winner stays open: it serves, already compiled
        assert fastest is not None
        backend = fastest
        engine, prec = best.split("-")
        sides = tuned_sides(backend, budget or half_the_ram())
        # The default side was just timed as the reference; the rest are timed now.
        seconds = {str(s): reference[best] if s == side else seconds_per_window(backend, s) for s in sides}
        # Two windows per call only where that is measurably faster per window (on a
        # CPU it seldom is: the pair's activations leave the caches, as big windows do).
        paired = seconds_per_window(backend, side, repeats=2, batch=2)
        batch = 2 if paired < 0.95 * reference[best] else 1
        record = {
            "engine": engine,
            "precision": prec,
            "reference_side": side,
            "reference": reference,
            "seconds": seconds,
            "batch": batch,
            "paired_seconds_per_window": paired,
        }
        known[key] = record
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(cache)
        log(
            f"{entry.name} v{entry.version}: measured "
            + ", ".join(f"{k} {v:.3f} s" for k, v in reference.items())
            + f" per {side}-px window; serving with {best} (cached in {cache})"
        )
    else:
        backend = backends.open_backend(entry, record["engine"], precision=record["precision"])
    backend.window_seconds = {int(s): float(t) for s, t in record["seconds"].items()}
    backend.best_batch = int(record.get("batch", 1))
    return backend
