"""Buildings as mappers draw them, measured on every shared real tile: the default model's
mask traced and simplified (what footprints gave before), and regularised (what it gives
now). Per area: the share of corners within 10 degrees of a right angle, vertices per
building, object F1 of the polygons (rasterised, matched one-to-one at IoU >= 0.5 with the
reference's 8-connected buildings) and milliseconds per building.

The default model saw these areas in training: the masks are a fit, so the figures compare
two ways of drawing the same masks, not the model.

    .venv/bin/python benchmarks/buildings.py [--data ../shared/data/real-oam --data ...]

Writes benchmarks/results/buildings.json and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

from service.engines import open_engine  # noqa: E402
from service.outputs.polygons import PolygonOptions, finish_polygons, traced_polygons  # noqa: E402
from service.outputs.regularize import right_angle_share  # noqa: E402
from service.outputs.segment import segment_file  # noqa: E402
from service.store.repository import ModelStore  # noqa: E402
from service.tiling.engine import TilingEngine  # noqa: E402
from training.data.inria import InriaDataset  # noqa: E402
from training.objects import ObjectCounts, components, match, polygon_labels  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", type=Path, help="real imagery roots (default: shared real-oam and real-more)")
    ap.add_argument("--store", type=Path, default=_report.ROOT / "model_store")
    args = ap.parse_args()
    roots = args.data or [_report.ROOT.parent / "shared" / "data" / d for d in ("real-oam", "real-more")]
    store = ModelStore(args.store)
    entry = store.get(store.default_name())
    engine = TilingEngine(open_engine(entry, "auto"))
    ways = {"traced": PolygonOptions(regularize=False), "regularised": PolygonOptions()}
    acc: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiles = [t for r in roots for t in InriaDataset(r).tiles if t.gt is not None]
        for t in tqdm(tiles, desc="tiles", unit="tile"):
            mask = Path(tmp) / f"{t.name}.tif"
            segment_file(engine, t.image, mask, progress=False)
            with rasterio.open(mask) as src, rasterio.open(t.gt) as gt:
                crs, ref = src.crs.to_string(), components(gt.read(1))
                traced = traced_polygons(src)
                for way, opts in ways.items():
                    t0 = time.perf_counter()
                    polys = finish_polygons(traced, opts, crs)
                    seconds = time.perf_counter() - t0
                    a = acc.setdefault(t.city, {}).setdefault(way, {"polys": [], "objects": ObjectCounts(), "s": 0.0})
                    a["polys"] += polys
                    a["objects"] += match(*polygon_labels(polys, ref[0].shape, src.transform), *ref)
                    a["s"] += seconds
    rows = []
    for way in ways:
        for city in [*sorted(acc), "all"]:
            parts = [acc[c][way] for c in acc] if city == "all" else [acc[city][way]]
            polys = [p for a in parts for p in a["polys"]]
            objects = sum((a["objects"] for a in parts), ObjectCounts())
            rows.append(
                {
                    "outlines": way,
                    "area": city,
                    "buildings": len(polys),
                    "right_angles_%": round(100 * right_angle_share(polys), 1),
                    "vertices_per_building": round(float(np.mean([len(p.exterior.coords) - 1 for p in polys])), 1),
                    "object_f1_%": round(100 * objects.f1, 2),
                    "ms_per_building": round(1000 * sum(a["s"] for a in parts) / max(1, len(polys)), 2),
                }
            )
    _report.print_table(rows)
    print(_report.write("buildings", rows, {"model": f"{entry.name}:{entry.version}"}))


if __name__ == "__main__":
    main()
