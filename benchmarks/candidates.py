"""A candidate recipe's speed beside the default's, side by side in one run: each training
checkpoint given is exported into a scratch store (as ``footprints export`` does) and one
5000 x 5000 tile goes through the engine ``--backend auto`` picks, in-process at the
manifest's plan window, with the default model's newest version on the same tile. Per
model: kMAC per output pixel of a 5000 x 5000 tile at that plan (overlaps and TTA included,
as ``footprints report`` counts them), seconds per tile (the
median of ``--repeats`` after a first, warming call) and the ratio to the default's.

A recipe is only worth its score if the default's budget (1.5x its tile time, what
``footprints report`` allows a new default) can serve it.

Writes benchmarks/results/candidates.json (``--out``) and prints the table.

    .venv/bin/python benchmarks/candidates.py --checkpoint NAME=RUN/model.pt [--checkpoint ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
from frontend import make_tile  # noqa: E402


def tile_row(entry, tile: Path, repeats: int) -> dict:
    from service.engines import open_engine
    from service.rasters import RGBRaster
    from service.tiling.engine import TilingEngine
    from training.report import tile_cost

    backend = open_engine(entry, "auto")
    engine = TilingEngine(backend)
    times = []
    with RGBRaster(tile) as src:
        plan = engine.plan(src.height, src.width)
        for _ in range(repeats + 1):
            t = time.perf_counter()
            engine.probabilities(src)
            times.append(time.perf_counter() - t)
    return {
        "model": f"{entry.name} v{entry.version}",
        "engine": type(backend).__name__,
        "window": plan.window,
        "windows": len(plan.windows),
        "kmac_per_px": tile_cost(entry, engine)[1],
        "first_tile_s": times[0],
        "tile_s": statistics.median(times[1:]),
    }


def main() -> None:
    _report.with_startup_env()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", action="append", required=True, help="NAME=PATH of a training model.pt")
    ap.add_argument("--store", type=Path, default=_report.ROOT / "model_store", help="the default model's store")
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=_report.RESULTS / "candidates.json")
    args = ap.parse_args()
    from service.store.repository import ModelStore
    from training.export import export

    default = ModelStore(args.store).get()  # its default model, newest version
    with tempfile.TemporaryDirectory(prefix="footprints-candidates-") as tmp:
        scratch = Path(tmp) / "store"
        entries = [default]
        for spec in args.checkpoint:
            name, _, path = spec.partition("=")
            export(Path(path), scratch, name, 1)
            entries.append(ModelStore(scratch).get(name, 1))
        tile = make_tile(Path(tmp) / "tile.tif", args.size)
        rows = [tile_row(e, tile, args.repeats) for e in entries]
    for r in rows:
        r["tile_time_vs_default"] = r["tile_s"] / rows[0]["tile_s"]
    meta = {"tile": f"{args.size} x {args.size}", "default": rows[0]["model"], "checkpoints": args.checkpoint}
    _report.write("candidates", rows, meta, out=args.out)


if __name__ == "__main__":
    main()
