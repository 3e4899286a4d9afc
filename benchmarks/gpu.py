"""The GPU path measured on a GPU (run where ``footprints`` sees one; the CPU machines
of CI have none): per-window speed of each GPU engine present (TensorRT FP16 and FP32,
ONNX Runtime CUDA, PyTorch CUDA), and one 5000 x 5000 tile through gRPC on the GPU
engine ``auto`` picks (seconds, windows, peak GPU memory), its mask against the CPU
fp32 mask (ONNX Runtime, in-process). Engines that are not installed are reported as
such, with the reason. Writes benchmarks/results/gpu.json and prints a table.

    python benchmarks/gpu.py [--store model_store] [--model effnet] [--size 5000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _gpu_memory_sampler(stop: threading.Event, peak: list[int]) -> None:
    """Peak GPU memory in use (all processes on the card, MiB) by nvidia-smi, every 0.1 s:
    TensorRT's and ONNX Runtime's allocations are outside PyTorch's counters."""
    while not stop.wait(0.1):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            peak[0] = max(peak[0], int(out.stdout.split()[0]))
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return


def _time_window(engine, crops: list[np.ndarray], runs: int = 5) -> float:
    from service.engines.timings import median_seconds

    return median_seconds(lambda: engine.infer(crops), runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", type=Path, default=Path("model_store"))
    ap.add_argument("--model", default="effnet")
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu.json")
    args = ap.parse_args()

    import torch

    from service.api.server import ServerConfig
    from service.client import FootprintsClient
    from service.engines import open_engine
    from service.engines.gpu import require_gpu
    from service.store.repository import ModelStore
    from service.tiling.engine import ArraySource, EngineConfig, TilingEngine
    from tests.service.servers import CRS, TRANSFORM, RunningServer

    card = require_gpu("benchmarks/gpu.py")
    entry = ModelStore(args.store).get(args.model)
    side = entry.geometry.default_window("cuda")
    crops = entry.geometry.random_crops(1, side)
    rows: list[dict] = []
    engines = {
        "tensorrt fp16": ("tensorrt", "fp16"),
        "tensorrt fp32": ("tensorrt", "fp32"),
        "onnxruntime cuda": ("onnxruntime", "auto"),
        "pytorch cuda": ("torch", "auto"),
    }
    for label, (kind, precision) in engines.items():
        try:
            backend = open_engine(entry, kind, device="cuda", precision=precision)
        except Exception as e:  # not installed, no engine for this GPU, or a program this PyTorch cannot load
            rows.append({"measure": f"one {side}-px window, {label}", "value": None, "note": f"not run: {type(e).__name__}: {e}"})
            continue
        seconds = _time_window(backend, crops)
        backend.close()
        rows.append({"measure": f"one {side}-px window, {label} (s, median of 5)", "value": seconds})

    rgb = np.random.default_rng(1).integers(0, 256, (3, args.size, args.size), dtype=np.uint8)
    rgb[:, ::7] = 200  # some structure
    server = RunningServer(ServerConfig(store=args.store, port=0, metrics_port=0, models=[args.model], backend="auto"))
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_gpu_memory_sampler, args=(stop, peak), daemon=True)
    sampler.start()
    try:
        with FootprintsClient(server.address) as client:
            client.segment_array(rgb[:, :1024, :1024], CRS, TRANSFORM)  # warm
            torch.cuda.synchronize()
            t = time.perf_counter()
            mask, result = client.segment_array(rgb, CRS, TRANSFORM)
            seconds = time.perf_counter() - t
    finally:
        stop.set()
        server.stop()
    s = result.summary
    # The CPU fp32 reference: ONNX Runtime where the graph is at hand, else the same
    # exported program on the CPU (a GPU machine may be sent the program alone).
    reference = "onnxruntime" if entry.has("model.onnx") else "torch"
    cpu_backend = open_engine(entry, reference, device="cpu")
    cpu = TilingEngine(cpu_backend, EngineConfig(window=s.window)).probabilities(ArraySource(rgb)) >= 0.5
    agree = float(np.mean((mask > 0) == cpu))
    rows += [
        {"measure": f"{args.size}^2 tile through gRPC, {s.backend} {s.precision} (s)", "value": seconds},
        {"measure": "windows / window side (px)", "value": f"{s.windows} / {s.window}"},
        {"measure": "peak GPU memory in use (MiB, nvidia-smi)", "value": peak[0]},
        {"measure": f"share of pixels agreeing with the CPU fp32 mask ({reference})", "value": agree},
    ]
    report = {"gpu": card.name, "compute_capability": card.cc, "torch": torch.__version__, "model": f"{entry.name} v{entry.version}", "rows": rows,
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{card.name} (cc {card.cc}), {entry.name} v{entry.version}")
    for r in rows:
        v = r["value"]
        print(f"  {r['measure']}: {v:.4g}" if isinstance(v, float) else f"  {r['measure']}: {v} {r.get('note', '')}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
