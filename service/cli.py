"""The ``footprints`` command line. Each subcommand imports what it needs when run,
so ``footprints --help`` and the serving commands stay light."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _synth(args: argparse.Namespace) -> int:
    from training.synthetic import synthesize

    cities = args.cities.split(",") if args.cities else None
    reports = synthesize(args.out, size=args.size, tiles_per_city=args.tiles_per_city, seed=args.seed, cities=cities)
    for r in reports:
        print(f"{r.split:5s} {r.city}{r.index}: {r.buildings} buildings, {100 * r.building_share:.1f} % building pixels")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_dirs, write_json

    report = evaluate_dirs(args.pred, args.gt)
    print(report.table(args.name or Path(args.pred).name))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from training.baselines import ColourBaseline
    from training.data.inria import InriaDataset

    from .overlay import write_overlay

    data = InriaDataset(args.data)
    model = ColourBaseline().fit(data.split("train"))
    for t in data.split(args.split):
        pred = Path(args.out) / t.image.name
        model.predict_file(t.image, pred)
        if args.overlays:
            png = write_overlay(t.image, pred, Path(args.overlays) / f"{t.name}.png", ref=t.gt)
            print(f"overlay {png}")
    print(f"wrote {len(data.split(args.split))} masks to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="footprints", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write synthetic Inria-like cities (train and test layout)")
    p.add_argument("--out", required=True, type=Path, help="output folder (gets train/ and test/)")
    p.add_argument("--size", type=int, default=5000, help="tile side in pixels (Inria: 5000)")
    p.add_argument("--tiles-per-city", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cities", help="comma-separated subset of city names (default: all ten)")
    p.set_defaults(func=_synth)

    p = sub.add_parser("evaluate", help="IoU and accuracy per city and overall, the benchmark's way")
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted masks <city><n>.tif")
    p.add_argument("--gt", required=True, type=Path, help="folder of reference masks <city><n>.tif")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--name", help="row label in the table (default: the prediction folder's name)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("baseline", help="fit the colour-lookup reference floor and label a split")
    p.add_argument("--data", required=True, type=Path, help="dataset root in the Inria layout")
    p.add_argument("--out", required=True, type=Path, help="folder for the predicted masks")
    p.add_argument("--split", default="test", help="split to label (train, test or all)")
    p.add_argument("--overlays", type=Path, help="folder for overlay PNGs against the ground truth")
    p.set_defaults(func=_baseline)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import InputError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InputError, FileNotFoundError) as e:
        # Bad input is the user's to fix: one clear line, no traceback.
        print(f"footprints {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
