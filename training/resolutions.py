"""Store versions scored as served on every real area at several ground resolutions:

    python -m training.resolutions --models effnet:1,effnet:2 --data ../shared/data/real-oam \
        --data ../shared/data/real-more --fine-data ../shared/data/real-oam-z20 --json OUT.json

0.15 m is the real zoom-20 imagery where ``--fine-data`` holds the same tiles (zanzibar,
kampala, nepal), elsewhere the tiles resampled (as :func:`training.loao.at_resolution`);
0.6 m is resampled. Areas a version trained on are a fit, not a measure: what this shows is
whether a version keeps its 0.3 m figure at other resolutions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from service.engines import open_engine
from service.store.repository import ModelStore
from service.tiling.engine import TilingEngine

from .data.sources import Root
from .loao import area_tiles, at_resolution
from .metric import pooled
from .publish import score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path("model_store"))
    ap.add_argument("--models", required=True, help="NAME[:VERSION],...")
    ap.add_argument("--data", action="append", required=True, help="real imagery roots")
    ap.add_argument("--fine-data", action="append", default=[], help="the same tiles in finer real imagery")
    ap.add_argument(
        "--same-area", action="append", default=None,
        help="CITY+CITY: cities scored as one area, as loao and report take it (default: nepal+banepa)",
    )  # fmt: skip
    ap.add_argument("--resolutions", default="0.3,0.15,0.6")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    same_area = [g.split("+") for g in args.same_area or ["nepal+banepa"]]
    areas = area_tiles([Root(Path(d)) for d in args.data], same_area)
    cache = Path(tempfile.mkdtemp(prefix="footprints-resolutions-"))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for spec in args.models.split(","):
        entry = ModelStore(args.store).find(spec)
        engine = TilingEngine(open_engine(entry, "onnxruntime"))
        out[spec] = {}
        for r in (float(x) for x in args.resolutions.split(",")):
            counts = {
                a: score(engine, t).overall
                for a, t in at_resolution(areas, r, [Root(Path(f)) for f in args.fine_data], cache).items()
            }
            row = {a: round(100 * c.iou, 2) for a, c in counts.items()}
            out[spec][f"{r:g}"] = {**row, "pooled": round(100 * pooled(list(counts.values())).iou, 2)}
            print(spec, f"{r:g} m", out[spec][f"{r:g}"], flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
