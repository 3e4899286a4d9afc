"""INT8 against fp32 (and bf16 where native), side by side in one run, per store model
that has an INT8 graph (``footprints check-precision NAME --int8``): seconds per window
(the plan's), seconds per 5000 x 5000 tile (in-process, the same plan), the share of
mask pixels that agree with fp32 on that tile, and IoU pooled over every shared real
tile against its reference at each precision (the labels the gate's IoU rule reads).
Each window's time is set against its floor: its MACs over this CPU's GEMM rate in the
same precision (a 4096^3 MatMul through oneDNN, measured in the same run).
A model without an INT8 graph, or whose graph failed its gate, is listed with the reason.

Writes benchmarks/results/int8.json (``--out`` for another host's record) and prints the table.

    .venv/bin/python benchmarks/int8.py [--models effnet] [--size 5000] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
from engines import gemm_rates, window_macs  # noqa: E402
from frontend import make_tile  # noqa: E402

DATA = [_report.ROOT.parent / "shared/data/real-oam", _report.ROOT.parent / "shared/data/real-more"]


def _engines(entry) -> dict:
    from service.engines import open_engine
    from service.machine import this_cpu

    precisions = ["fp32", "int8"] + (["bf16"] if this_cpu().bf16 else [])
    return {p: open_engine(entry, "openvino", precision=p) for p in precisions}


def rows_for(name: str, tile: Path, tiles: list, rates: dict[str, float]) -> list[dict]:
    from service.engines.openvino import precision_check
    from service.engines.timings import median_seconds
    from service.rasters import RGBRaster
    from service.store.repository import ModelStore
    from service.tiling.engine import TilingEngine
    from training.publish import score

    entry = ModelStore(_report.ROOT / "model_store").get(name)
    record = precision_check(entry, "openvino", "int8")
    if record is None or not record["accepted"]:
        why = "no INT8 graph" if record is None else record.get("why") or f"flips {record['mask_flip_share']:.2%}"
        return [{"model": f"{name} v{entry.version}", "precision": "int8", "refused": why, "auto_serves": "fp32/bf16"}]
    out, masks = [], {}
    macs: dict[int, int] = {}  # per window side: every precision runs the same plan
    for precision, backend in _engines(entry).items():
        engine = TilingEngine(backend)
        with RGBRaster(tile) as src:
            plan = engine.plan(src.height, src.width)
            side = plan.window
            crops = backend.geometry.split(src.read(0, 0, backend.geometry.read_side(side))[None], side)
            window_s = median_seconds(partial(backend.infer, crops), repeats=5)
            t = time.perf_counter()
            probs = engine.probabilities(src)
            tile_s = time.perf_counter() - t
        masks[precision] = probs >= backend.threshold
        real = score(engine, tiles).overall  # every real tile as served, pooled
        if side not in macs:
            macs[side] = window_macs(entry, side)  # loads the checkpoint and traces it
        floor_s = 2 * macs[side] / (rates[precision] * 1e9)  # this precision's GEMM rate
        out.append(
            {
                "model": f"{name} v{entry.version}",
                "precision": precision,
                "window": side,
                "window_s": window_s,
                "window_x_floor": window_s / floor_s,
                "tile_s": tile_s,
                "windows": len(plan.windows),
                "real_iou": real.iou,
                "real_accuracy": real.accuracy,
            }
        )
    fastest = min(out, key=lambda x: x["tile_s"])
    for r in out:
        r["tile_mask_agreement_vs_fp32"] = float(np.mean(masks[r["precision"]] == masks["fp32"]))
        base = next(x for x in out if x["precision"] == "fp32")
        r["window_speedup_vs_fp32"] = base["window_s"] / r["window_s"]
        r["tile_speedup_vs_fp32"] = base["tile_s"] / r["tile_s"]
        r["iou_change_vs_fp32"] = r["real_iou"] - base["real_iou"]
        r["tile_time_vs_fastest"] = r["tile_s"] / fastest["tile_s"]
    return out


def main() -> None:
    _report.with_startup_env()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="effnet")
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=_report.RESULTS / "int8.json")
    args = ap.parse_args()
    from training.data.sources import Root
    from training.loao import labelled_tiles

    tiles = labelled_tiles([Root(d) for d in DATA])
    with tempfile.TemporaryDirectory(prefix="footprints-int8-") as tmp:
        tile = make_tile(Path(tmp) / "tile.tif", args.size)
        rates = gemm_rates()  # the floor, measured in the same run
        rows = [r for name in args.models.split(",") for r in rows_for(name, tile, tiles, rates)]
    meta = {"tile": f"{args.size} x {args.size}", "real_tiles": len(tiles), "gemm_gflops": rates}
    _report.write("int8", rows, meta, out=args.out)


if __name__ == "__main__":
    main()
