"""The front end's floor: a 5000 x 5000 tile through the real pipeline with the model
taken out (the null engine answers every window with zeros at no cost), in-process and
through gRPC, broken down by stage (service/tiling/stages.py); beside it, the same tile
through the default model, in-process, for the ratio the front end must stay under
(10 % of the model's tile).

The tile is real imagery (the shared zanzibar scene, 0.3 m, repeated to 5000 x 5000 and
written as a DEFLATE GeoTIFF in UTM: factor 1, no resampling). Writes
benchmarks/results/frontend.json and frontend.png (stacked stage bars) and prints the table.

    .venv/bin/python benchmarks/frontend.py [--size 5000] [--no-model] [--label now]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

SCENE = _report.ROOT.parent / "shared/data/real-oam/images/zanzibar1.tif"


def make_tile(path: Path, size: int) -> Path:
    from service.rasters import write_geotiff

    with rasterio.open(SCENE) as src:
        scene = src.read([1, 2, 3])
    reps = (1, -(-size // scene.shape[1]), -(-size // scene.shape[2]))
    rgb = np.ascontiguousarray(np.tile(scene, reps)[:, :size, :size])
    write_geotiff(path, rgb, crs="EPSG:32737", transform=from_origin(500_000, 9_300_000, 0.3, 0.3))
    return path


def steady(call, repeats: int) -> dict:
    """The run of median time among ``repeats`` calls after a first one (a server serves
    many tiles: pools, kernels and the allocator's arenas are warm after the first), with
    the first call's time beside it."""
    first = call()
    runs = sorted((call() for _ in range(repeats)), key=lambda r: r["tile_s"])
    row = runs[len(runs) // 2]
    row["first_tile_s"] = first["tile_s"]
    row["repeats"] = repeats
    return row


def in_process(tile: Path, out: Path, backend: str, repeats: int) -> dict:
    from service.engines import open_engine
    from service.outputs.segment import SegmentOptions, segment_file
    from service.store.repository import ModelStore
    from service.tiling.engine import TilingEngine

    entry = ModelStore(_report.ROOT / "model_store").find(None)
    engine = TilingEngine(open_engine(entry, backend))
    opts = SegmentOptions(polygons=out / f"{backend}.geojson")

    def once() -> dict:
        s = segment_file(engine, tile, out / f"{backend}.tif", opts, progress=False)
        return {
            "path": "in-process",
            "engine": f"{backend} ({engine.model.engine} {engine.model.precision})",
            "model": f"{entry.name} v{entry.version}",
            "windows": s["windows"],
            "window": s["window"],
            "tile_s": s["seconds"],
            "stages": s["stages"],
        }

    return steady(once, repeats)


def through_grpc(tile: Path, out: Path, repeats: int) -> dict:
    from service.client import FootprintsClient

    proc, address = _report.serve(_report.ROOT / "model_store", "--backend", "null", "--tune", "off")
    try:
        with FootprintsClient(address) as client:

            def once() -> dict:
                t = time.perf_counter()
                result = client.segment_file(tile, out / "grpc.tif", polygons=out / "grpc.geojson", progress=False)
                total = time.perf_counter() - t
                timings = result.summary.timings
                stages = dict(timings.stage_seconds)
                # After the summary: the buildings traced and sent, the client's COG made
                # meanwhile.
                stages["polygons"] = total - timings.total_seconds
                return {
                    "path": "gRPC",
                    "engine": "null",
                    "model": f"{result.summary.model} v{result.summary.model_version}",
                    "windows": result.summary.windows,
                    "window": result.summary.window,
                    "tile_s": total,
                    "stages": stages,
                }

            return steady(once, repeats)
    finally:
        proc.terminate()
        proc.wait(60)


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from service.tiling.stages import ORDER

    fig, ax = plt.subplots(figsize=(8, 3.2))
    labels = [f"{r['path']}, {r['engine'].split(' ')[0]}" for r in rows]
    for i, r in enumerate(rows):
        left = 0.0
        for k, stage in enumerate(ORDER):
            v = r["stages"].get(stage, 0.0)
            ax.barh(i, v, left=left, color=f"C{k}", label=stage if i == 0 else None)
            left += v
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xlabel("seconds per 5000 x 5000 tile (stages as the tile's thread waited on them)")
    ax.legend(fontsize=7, ncol=4, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    _report.with_startup_env()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3, help="tiles timed after the first (the median is reported)")
    ap.add_argument("--no-model", action="store_true", help="skip the default model's tile (the ratio's denominator)")
    ap.add_argument("--out", type=Path, default=_report.RESULTS / "frontend.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="footprints-frontend-") as tmp:
        work = Path(tmp)
        tile = make_tile(work / "tile.tif", args.size)
        rows = [in_process(tile, work, "null", args.repeats), through_grpc(tile, work, args.repeats)]
        if not args.no_model:
            rows.append(in_process(tile, work, "auto", args.repeats))
    model_s = rows[-1]["tile_s"] if not args.no_model else None
    table = []
    for r in rows:
        row = {k: v for k, v in r.items() if k != "stages"}
        row["sum_of_stages_s"] = round(sum(r["stages"].values()), 3)
        row.update({f"{k}_s": round(v, 3) for k, v in r["stages"].items()})
        if model_s:
            row["of_model_tile"] = round(r["tile_s"] / model_s, 3)
        table.append(row)
    _report.write("frontend", table, {"tile": f"{args.size} x {args.size}, {SCENE.name} repeated, 0.3 m"}, out=args.out)
    chart(rows, args.out.with_suffix(".png"))
    print(json.dumps({r["path"] + " " + r["engine"]: r["stages"] for r in rows}, indent=1))


if __name__ == "__main__":
    main()
