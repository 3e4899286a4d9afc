"""One 5000 x 5000 tile through the tiling engine on this machine's CPU.

The real AMLL U-Net (filters 32-512, random He-initialised weights: speed does not
depend on the weights) at 572, 1180 and 2636-px windows as given (``exact``), the
same caps with the window fitted to the tile (``fit``: the smallest valid window
needing as many windows), and the NUS network in dual-resolution mode (384 / 768,
64 px blended overlap). Each configuration runs in its own process, with glibc
kept from returning large blocks to the OS (shared/perf-notes.md), so its peak
RSS is its own. Writes benchmarks/results/tiling.json and prints a table.

    .venv/bin/python benchmarks/tiling.py [--size 5000] [--configs amll-572,amll-1180,...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from service.allocator import STARTUP_ENV

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

CONFIGS = {
    "amll-572": ("amll_unet", 572, False),
    "amll-1180": ("amll_unet", 1180, False),
    "amll-2636": ("amll_unet", 2636, False),
    "amll-1180-fit": ("amll_unet", 1180, True),
    "amll-2636-fit": ("amll_unet", 2636, True),
    "nus-dual-384": ("nus_dual_unet", 384, False),
}


def child(name: str, image: str) -> None:
    """Run one configuration; print its row as JSON on the last line."""
    import torch

    from service.engines.pytorch import TorchEngine
    from service.rasters import RGBRaster
    from service.tiling.engine import EngineConfig, TilingEngine
    from training.networks.model import SegmentationModel

    network, window, fit = CONFIGS[name]
    torch.manual_seed(0)
    model = SegmentationModel(network, {}, [110.0, 110.0, 110.0])
    engine = TilingEngine(TorchEngine(model, "cpu"), EngineConfig(window=window, fit_window=fit))
    with RGBRaster(image) as src:
        windows, _, used = engine.plan(src.height, src.width)
        t = time.perf_counter()
        building = 0.0
        for _, _, rows in engine.run(src, progress=True):
            building += float((rows >= 0.5).sum())
        seconds = time.perf_counter() - t
        mpx = src.height * src.width / 1e6
    n_inputs = 2 if network == "nus_dual_unet" else 1
    row = {
        "config": name,
        "window": used,
        "windows": len(windows),
        "input_mpx": round(len(windows) * used * used * n_inputs / 1e6, 1),
        "seconds": seconds,
        "out_mpx_per_s": mpx / seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "est_window_gb": engine.model.window_bytes(used) / 2**30,
    }
    print(json.dumps(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", type=Path, help="report path (default benchmarks/results/tiling.json)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.image)
        return

    from training.synthetic import style, synthesize_tile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        report = synthesize_tile(Path(tmp), style("brookline"), 1, args.size, 1, seed=0)
        for name in args.configs.split(","):
            print(f"== {name}", flush=True)
            done = subprocess.run(
                [sys.executable, __file__, "--child", name, "--image", str(report.image)],
                env={**os.environ, **STARTUP_ENV},
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = next((r["seconds"] for r in rows if r["config"] == "amll-572"), None)
    for r in rows:
        r["speed_vs_572"] = base / r["seconds"] if base else None
    _report.write("tiling", rows, {"tile_px": args.size, "malloc_env": STARTUP_ENV}, out=args.out)


if __name__ == "__main__":
    main()
