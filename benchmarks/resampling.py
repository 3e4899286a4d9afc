"""Which resampler serves 0.15 m and 0.6 m imagery best: the leave-one-area-out runs of
``--runs`` score every area at 0.15 m (real zoom-20 imagery where ``--fine-data`` has it)
and 0.6 m, with serving's resampler swapped for each of Pillow's filters, and with no
resampling at all (the raster fed as it comes, trusting the recipe's scale augmentation).

The test tiles that are resampled (areas without real 0.15 m imagery, and every 0.6 m one)
are made once, with the serving filter of the day, so only what the model is fed changes.

    .venv/bin/python benchmarks/resampling.py --runs RUNS [--runs RUNS2] \\
        [--data ../shared/data/real-oam --data ../shared/data/real-more \\
         --fine-data ../shared/data/real-oam-z20]

Writes benchmarks/results/resampling.json and prints the table (IoU %).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

import service.tiling.pipeline as pipeline  # noqa: E402
from service.tiling.resample import resample_image  # noqa: E402
from training.data.inria import InriaDataset  # noqa: E402
from training.data.sources import parse_root  # noqa: E402
from training.loao import leave_one_area_out, score_rows  # noqa: E402

FILTERS = ("bilinear", "bicubic", "lanczos", "box")  # bilinear: what serving uses


def _with_filter(name: str):
    """Serving's ``resample_image`` with Pillow's ``name`` filter."""
    return mock.patch.object(pipeline, "resample_image", functools.partial(resample_image, method=name))


class _AsItComes(pipeline.Resolution):
    def model_shape(self, height: int, width: int) -> tuple[int, int]:
        return (height, width)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", action="append", type=Path, required=True, help="folder of loao-<area>/model.pt runs")
    p.add_argument("--data", action="append", help="roots holding the areas")
    p.add_argument("--fine-data", action="append", help="roots of the same tiles in finer real imagery")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    roots = [parse_root(d) for d in args.data or ["../shared/data/real-oam", "../shared/data/real-more"]]
    fine = [parse_root(d) for d in args.fine_data or ["../shared/data/real-oam-z20"]]
    cache = Path(tempfile.mkdtemp(prefix="footprints-resampling-"))
    ways = {name: _with_filter(name) for name in FILTERS}
    ways["none (as it comes)"] = mock.patch.object(pipeline, "Resolution", _AsItComes)
    rows = []
    for way, patch in ways.items():
        with patch:
            results = leave_one_area_out(args.runs, roots, [["nepal", "banepa"]], resolutions=(0.15, 0.6), fine=fine, cache=cache)
        for label, cells in score_rows(results).items():
            if "threshold" not in label:
                rows.append(
                    {"resampler": way, "at": label.split(" at ")[-1]} | {a: round(100 * c.iou, 2) for a, c in cells.items()}
                )
    real = sorted({t.name for root in fine for t in InriaDataset(root.path).tiles})
    _report.write("resampling", rows, {"runs": [str(r) for r in args.runs], "real_fine_tiles": real}, args.out)


if __name__ == "__main__":
    main()
