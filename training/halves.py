"""Fine-tuning measured on the half of an area a model never saw.

``python -m training.halves --runs DIR --data ROOT ...`` takes, for each real area, the
leave-one-area-out run that never saw it (``DIR/loao-<area>/model.pt``) as the model a new
user of that area would start from, and splits every tile of the area into a west half
and an east half. It fine-tunes the run (``footprints finetune``, the recipe's own
augmentation) on at most ``--max-label-px`` labelled pixels of the west halves within
``--minutes``, then scores the run before and after on the east halves, as served (the
store's ONNX Runtime graph, resampled to the model's resolution and back). With
``--unlabelled`` it self-trains instead: the whole west halves' imagery, no labels, each
labelled by the run itself (``training/selftrain.py``).

West and east, not alternate tiles: the halves share the area's look but no building,
which is what a user who labels a corner of their area gets.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.engines import open_engine
from service.store.repository import ModelStore
from service.tiling.engine import TilingEngine

from .data.inria import Tile
from .data.sources import Root, parse_root
from .loao import area_tiles
from .metric import Counts, pooled
from .publish import score

LABEL_PX = 1_000_000  # the budget of labels a user draws: 1 Mpx (0.09 km2 at 0.3 m)


def _crop(tile: Tile, cols: tuple[int, int], rows: int, out: Path) -> Tile:
    """Columns ``cols`` and the first ``rows`` rows of ``tile`` (image and mask), written
    under ``out`` with their georeference."""
    import rasterio
    from rasterio.windows import Window

    from service.rasters import write_geotiff

    assert tile.gt is not None
    window = Window(cols[0], 0, cols[1] - cols[0], rows)
    paths = out / "images" / tile.image.name, out / "gt" / tile.image.name
    for src_path, dst in zip((tile.image, tile.gt), paths, strict=True):
        with rasterio.open(src_path) as src:
            data = src.read(window=window)
            write_geotiff(dst, data if data.shape[0] > 1 else data[0], crs=src.crs, transform=src.window_transform(window))
    return Tile(tile.city, tile.index, paths[0], paths[1], tile.split)


def split_halves(tiles: Sequence[Tile], out: Path, label_px: int = LABEL_PX) -> tuple[Path, list[Tile]]:
    """West halves (cut to at most ``label_px`` pixels in all, the same share of rows from
    each) as a dataset root to fine-tune on, and the east halves as tiles to score."""
    import rasterio

    shapes = []
    for t in tiles:
        with rasterio.open(t.image) as src:
            shapes.append((src.height, src.width))
    west_px = sum(h * (w // 2) for h, w in shapes)
    share = min(1.0, label_px / max(1, west_px))
    east = []
    for t, (h, w) in zip(tiles, shapes, strict=True):
        _crop(t, (0, w // 2), max(1, int(h * share)), out / "tune")
        east.append(_crop(t, (w // 2, w), h, out / "score"))
    return out / "tune", east


def _scored(store: Path, name: str, tiles: list[Tile]) -> Counts:
    engine = TilingEngine(open_engine(ModelStore(store).get(name), "onnxruntime"))
    try:
        return score(engine, tiles).overall
    finally:
        engine.model.close()  # type: ignore[attr-defined]


def halves(
    runs: Path,
    roots: Sequence[Root],
    same_area: Sequence[Sequence[str]],
    minutes: float,
    work: Path,
    label_px: int = LABEL_PX,
    unlabelled: bool = False,
) -> dict[str, Any]:
    """Per area: the held-out run's counts on the east halves before and after fine-tuning
    on the west halves, the labels used and the fine-tune's record. ``unlabelled``: the
    whole west halves' imagery without its labels, labelled by the run itself
    (self-training) instead of at most ``label_px`` labelled pixels."""
    from .export import export
    from .finetune import finetune

    store = work / "store"
    out: dict[str, Any] = {"minutes": minutes, "label_px": 0 if unlabelled else label_px, "unlabelled": unlabelled, "areas": {}}
    for area, tiles in tqdm(area_tiles(roots, same_area).items(), desc="areas", unit="area"):
        run = runs / f"loao-{area.split('+')[0]}" / "model.pt"
        if not run.is_file():
            continue
        tune, east = split_halves(tiles, work / "halves" / area, 10**15 if unlabelled else label_px)
        key = area.split("+")[0]
        export(run, store, f"base-{key}", 1)
        before = _scored(store, f"base-{key}", east)
        labelled, images = ([], [Root(tune)]) if unlabelled else ([Root(tune)], [])
        record = finetune(
            store,
            f"base-{key}",
            labelled,
            f"tuned-{key}",
            minutes,
            run_dir=work / "runs" / key,
            progress=False,
            unlabelled=images,
        )
        after = _scored(store, f"tuned-{key}", east)
        import rasterio

        pixels = 0
        for p in (tune / "gt").glob("*.tif"):
            with rasterio.open(p) as m:
                pixels += m.width * m.height
        labels = 0 if unlabelled else pixels
        out["areas"][area] = {
            "before": before.as_dict(),
            "after": after.as_dict(),
            "label_px": labels,
            "image_px": pixels,
            "steps": record["steps"],
            "stopped_at_deadline": record["stopped_at_deadline"],
            "seconds": record["seconds"],
        }
    return out


def table(results: dict[str, Any]) -> str:
    """IoU % before and after per area, the gain, and the labels and minutes it took."""
    lines = [
        "| area | labels (px) | fine-tune (min) | steps | IoU before % | IoU after % | gain |",
        "|---|---|---|---|---|---|---|",
    ]
    gains = []
    areas = results["areas"]
    for area, r in areas.items():
        b, a = Counts.from_dict(r["before"]).iou, Counts.from_dict(r["after"]).iou
        gains.append(a - b)
        lines.append(
            f"| {area} | {r['label_px']:,} | {r['seconds'] / 60:.1f} | {r['steps']} | {100 * b:.2f} | {100 * a:.2f} | {100 * (a - b):+.2f} |"
        )
    if areas:
        b = pooled([Counts.from_dict(r["before"]) for r in areas.values()]).iou
        a = pooled([Counts.from_dict(r["after"]) for r in areas.values()]).iou
        lines.append(f"| pooled | | | | {100 * b:.2f} | {100 * a:.2f} | {100 * (a - b):+.2f} |")
        lines.append(f"| mean of areas | | | | | | {100 * float(np.mean(gains)):+.2f} |")
    return "\n".join(lines)


def chart(results: dict[str, Any], png: Path) -> Path:
    """IoU before and after fine-tuning, per area."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    areas = list(results["areas"])
    before = [100 * Counts.from_dict(results["areas"][a]["before"]).iou for a in areas]
    after = [100 * Counts.from_dict(results["areas"][a]["after"]).iou for a in areas]
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = np.arange(len(areas))
    ax.bar(xs - 0.2, before, 0.4, label="held-out run")
    how = "self-trained on the west half's imagery" if results.get("unlabelled") else "fine-tuned on the west half"
    ax.bar(xs + 0.2, after, 0.4, label=f"{how} ({results['minutes']:g} min)")
    ax.set_xticks(xs, areas)
    ax.set(ylabel="IoU % on the east half", title="Fine-tuning on a user's own area")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.halves", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, type=Path, help="folder with loao-<area>/model.pt runs")
    p.add_argument("--data", action="append", required=True, type=parse_root, help="real areas (repeatable)")
    p.add_argument(
        "--same-area", action="append", default=None, help="CITY+CITY: cities scored as one area (default: nepal+banepa)"
    )
    p.add_argument("--minutes", type=float, default=10.0, help="fine-tuning budget per area (at most 10)")
    p.add_argument("--max-label-px", type=int, default=LABEL_PX, help="labelled pixels to fine-tune on per area")
    p.add_argument(
        "--unlabelled", action="store_true",
        help="self-training: fine-tune on the whole west halves' imagery, labelled by the run itself, not on labels",
    )  # fmt: skip
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the results here (and a chart beside it)")
    args = p.parse_args(argv)
    same = [g.split("+") for g in args.same_area or ["nepal+banepa"]]
    work = args.work or Path(tempfile.mkdtemp(prefix="footprints-halves-"))
    results = halves(args.runs, args.data, same, args.minutes, work, args.max_label_px, args.unlabelled)
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"chart: {chart(results, args.json.with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
