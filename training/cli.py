"""The training subcommands of ``footprints`` (synth, train, publish, export, evaluate,
baseline), and ``segment --checkpoint``.

``service.cli`` finds :func:`register` through the ``footprints.cli`` entry point, so
the service never imports training: a serving install without this package simply
has no training commands. Each command imports what it needs when run.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any


def _evaluate_table(pairs: dict[str, tuple[Path, Path]]) -> str:
    """``footprints batch --gt``: the table ``footprints evaluate`` prints."""
    from .evaluate import evaluate_pairs

    return evaluate_pairs(pairs).table("footprints batch")


def _open_checkpoint(path: Path, device: str | None) -> Any:
    """A training checkpoint as a serving backend, run with PyTorch in-process."""
    from service.engines.pytorch import TorchEngine

    from .networks.model import load_checkpoint

    model, _ = load_checkpoint(path)
    return TorchEngine(model, device, name=str(path))


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
    from service.outputs.overlay import write_overlay
    from training.baselines import ColourBaseline
    from training.data.inria import InriaDataset

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


def _train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.data.sources import parse_root
    from training.loop import train

    cfg = load_config(args.config, args.set)
    if args.no_pretrained:
        cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, pretrained=False))
    roots = [parse_root(d) for d in args.data]
    holdout = [a for h in args.holdout or [] for a in h.split(",") if a]
    meta = train(cfg, roots, args.out, resume=args.resume, init=args.init, holdout=holdout)
    overall = meta.get("metrics", {}).get("overall")
    if overall:
        print(f"validation: IoU {100 * overall['iou']:.2f} %, accuracy {100 * overall['accuracy']:.2f} %")
    print(f"model: {args.out / 'model.pt'}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from training.publish import publish

    metrics = publish(
        args.checkpoint,
        args.store,
        args.name,
        args.version,
        args.test_data,
        args.real_data,
        commands=args.command or [],
        train_minutes=args.train_minutes,
        loao=args.loao,
    )
    overall = metrics["synthetic_test"]["overall"]
    print(
        f"{args.name} v{args.version}: synthetic test IoU {100 * overall['iou']:.2f} %, accuracy {100 * overall['accuracy']:.2f} %"
    )
    if metrics["real_oam"]:
        real = metrics["real_oam"]["overall"]
        print(f"real imagery: IoU {100 * real['iou']:.2f} %, accuracy {100 * real['accuracy']:.2f} %")
    print(f"card: {args.store / args.name / 'MODEL_CARD.md'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.export import export

    m = export(args.checkpoint, args.store, args.name, args.version, args.parity_data or [])
    print(
        f"exported {args.name} v{m['version']} to {args.store / args.name / str(m['version'])}: ONNX Runtime vs PyTorch "
        f"max |diff| {m['parity_max_abs_diff']:.2e} on {m['parity_window_px']}-px windows of "
        f"{', '.join(m['parity_windows'])} ({100 * m['parity_building_share']:.1f} % building)"
    )
    return 0


def _check_precision(args: argparse.Namespace) -> int:
    from training.data.sources import Root
    from training.loao import labelled_tiles
    from training.precision import check_store_version

    if args.int8 and not args.held_out:
        print("check-precision --int8 needs --held-out: labelled tiles the model never trained on (its IoU gate)")
        return 2
    held_out = labelled_tiles([Root(d) for d in args.held_out or []])
    if args.held_out and not held_out:
        print(f"--held-out {' '.join(map(str, args.held_out))}: no labelled tiles there")
        return 2
    name, _, version = args.model.partition(":")
    checks = check_store_version(args.store, name, int(version) if version else None, args.parity_data or [], args.int8, held_out)
    for key, c in checks.items():
        if c.get("measured"):
            limit = f"limit {c['limit']:.1%}"
            verdict = "accepted" if c["accepted"] else f"REFUSED ({c.get('why') or limit})"
            speed = f", {c['speedup_vs_fp32']:.2f}x fp32's speed" if "speedup_vs_fp32" in c else ""
            iou = ""
            if "iou_change" in c:
                iou = f", held-out IoU {c['held_out_iou']['fp32']:.4f} -> {c['held_out_iou']['int8']:.4f} over {len(c['held_out_tiles'])} tiles"
            print(
                f"{args.model} {key}: max |diff| {c['max_abs_diff']:.2e}, mask flips {c['mask_flip_share']:.3%}{speed}{iou}: {verdict}"
            )
        else:
            print(f"{args.model} {key}: not measured ({c['why']})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from service.errors import NotFoundError
    from service.store.repository import ModelStore
    from training.data.sources import parse_root
    from training.report import build_report, choose_default, markdown, write_report

    models = [m for group in args.models or [] for m in group.split(",") if m]
    rows = build_report(
        args.store, models, args.test_data, [parse_root(d) for d in args.real_data or []],
        [g.split("+") for g in args.same_area or []], timing=not args.no_timing, rescore=args.rescore,
    )  # fmt: skip
    store = ModelStore(args.store)
    try:
        current: str | None = store.default_name()
    except NotFoundError:  # a store of several models that names none yet
        current = None
    print(markdown(rows, current))
    for kind, path in write_report(rows, args.out, current).items():
        print(f"{kind}: {path}")
    chosen, why = choose_default(rows, current)
    if args.set_default and chosen is not None:
        newest = store.get(chosen.name).version
        if newest != chosen.version:
            print(f"not setting the default: {chosen.label} is not the newest version of {chosen.name} (v{newest})")
            return 1
        store.set_default(chosen.name)
        print(f"default: {chosen.name} ({why})")
    return 0


def _loao(args: argparse.Namespace) -> int:
    from service.tiling.engine import TTA_DEFAULT_PASSES
    from training.data.sources import parse_root
    from training.loao import (
        OBJECTS,
        SWEEP,
        as_json,
        choose_threshold,
        held_out_threshold,
        leave_one_area_out,
        object_table,
        table,
        threshold_chart,
    )

    same_area = [g.split("+") for g in args.same_area or []]
    resolutions = [float(r) for r in args.resolutions.split(",")]
    fine = [parse_root(d) for d in args.fine_data or []]
    results = leave_one_area_out(
        args.runs,
        [parse_root(d) for d in args.data],
        same_area,
        args.compare,
        args.store,
        args.overlays,
        resolutions,
        fine,
        tta_passes=args.tta_passes or (TTA_DEFAULT_PASSES if args.tta else 0),
    )
    print(table(results))
    if OBJECTS in results:
        print(object_table(results))
    if SWEEP in results:
        base = [a for a in results[SWEEP] if " at " not in a]
        print(
            f"threshold with the best pooled held-out IoU at {resolutions[0]:g} m: {choose_threshold(results[SWEEP], base):.2f}"
        )
        print(f"at every resolution scored (what publish --loao records): {held_out_threshold(results):.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(as_json(results))
        print(f"wrote {args.json}")
        if SWEEP in results:
            print(f"chart: {threshold_chart(results, args.json.with_suffix('.thresholds.png'))}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from training.data.sources import parse_root
    from training.finetune import finetune

    r = finetune(
        args.store,
        args.model,
        [parse_root(d) for d in args.data or []],
        args.name,
        args.minutes,
        args.out_store,
        unlabelled=[parse_root(d) for d in args.unlabelled or []],
    )
    print(
        f"{r['name']} v{r['version']}: {r['base']} fine-tuned on {len(r['train_tiles'])} tiles, {r['steps']} steps in "
        f"{r['seconds'] / 60:.1f} min; card {(args.out_store or args.store) / r['name'] / str(r['version']) / 'MODEL_CARD.md'}"
    )
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from service.store.ensemble import write_ensemble

    entry = write_ensemble(args.store, args.name, args.member)
    members = ", ".join(f"{m['name']}:{m['version']} ({m['weight']:g})" for m in entry.manifest.members)
    print(f"{entry.name} v{entry.version}: the average of {members}; card {entry.folder / 'MODEL_CARD.md'}")
    return 0


def register(sub: Any, extensions: Any) -> None:
    """Add the training subcommands to ``footprints``' parser (``sub``), and let
    ``segment --checkpoint`` open training checkpoints."""
    extensions.open_checkpoint = _open_checkpoint
    extensions.evaluate_pairs = _evaluate_table
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

    p = sub.add_parser("train", help="train a network by a config (also under torchrun for DDP)")
    p.add_argument("--config", required=True, type=Path, help="training/configs/<name>.yaml")
    p.add_argument(
        "--data", required=True, action="append",
        help="dataset root (Inria layout, or images/ and gt/), PATH or PATH:WEIGHT (each of its areas drawn with that weight); repeatable",
    )  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, log.csv, curves.png)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--init", type=Path, help="start from this checkpoint's weights (same network; fine-tuning)")
    p.add_argument("--holdout", action="append", help="AREA[,AREA]: areas left out of training (leave-one-area-out)")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config value (YAML), e.g. --set data.augment_scale=[0.5,2]; repeatable",
    )  # fmt: skip
    p.add_argument(
        "--no-pretrained",
        action="store_true",
        help="He-initialise the whole network, even where the config names pretrained weights",
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("publish", help="score a trained model and put it in the model store with its card")
    p.add_argument("--checkpoint", required=True, type=Path, help="RUN_DIR/model.pt")
    p.add_argument("--name", required=True, help="model name in the store (e.g. amll)")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--test-data", required=True, type=Path, help="dataset with held-out test cities (test/images, test/gt)")
    p.add_argument(
        "--real-data", type=Path, action="append", help="real imagery roots (e.g. ../shared/data/real-oam); repeatable"
    )
    p.add_argument("--loao", type=Path, help="a `footprints loao --json` file: its table goes on the card")
    p.add_argument("--command", action="append", help="a command that produced the model (repeatable; goes in the card)")
    p.add_argument("--train-minutes", type=float, help="wall-clock training time, for the card")
    p.set_defaults(func=_publish)

    p = sub.add_parser("export", help="export a checkpoint to ONNX in the versioned model store (parity-checked)")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--version", type=int, help="default: the next free version")
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument(
        "--parity-data", type=Path, action="append", help="real imagery root: its areas' windows join the parity check"
    )
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "check-precision", help="record how far OpenVINO fp32, bf16 (and INT8) move a store version's masks from fp32 PyTorch"
    )
    p.add_argument("--int8", action="store_true", help="also quantise it to INT8 with NNCF (calibrated on the parity windows)")
    p.add_argument("model", help="NAME or NAME:VERSION in the store")
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--parity-data", type=Path, action="append", help="real imagery root: its areas' windows join the check")
    p.add_argument(
        "--held-out", type=Path, action="append",
        help="labelled tiles the model never trained on (a root; repeatable): INT8's IoU gate (needed with --int8)",
    )  # fmt: skip
    p.set_defaults(func=_check_precision)

    p = sub.add_parser("loao", help="leave-one-area-out table: each area scored by the run that held it out")
    p.add_argument(
        "--runs", required=True, type=Path, action="append",
        help="folder with loao-<area>/model.pt runs (train --holdout <area>); repeat to score their average (an ensemble)",
    )  # fmt: skip
    p.add_argument("--data", required=True, action="append", help="dataset roots holding the areas (repeatable)")
    p.add_argument("--same-area", action="append", help="CITY+CITY: cities scored as one area (e.g. nepal+banepa)")
    p.add_argument("--compare", help="NAME[:VERSION] of a store model scored on the same tiles (e.g. amll:3)")
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--json", type=Path, help="also write the counts as JSON here")
    p.add_argument("--overlays", type=Path, help="folder for an overlay PNG of each held-out city's first tile")
    p.add_argument(
        "--resolutions", default="0.3",
        help="ground resolutions (m) to score each area at, e.g. 0.3,0.15,0.6 (real imagery from --fine-data, else resampled)",
    )  # fmt: skip
    p.add_argument("--fine-data", action="append", help="roots of the same tiles in finer real imagery (real-oam-z20)")
    p.add_argument("--tta", action="store_true", help="score with 8-pass test-time augmentation (8x the model time)")
    p.add_argument("--tta-passes", type=int, metavar="N", help="score with N-pass test-time augmentation (2, 4 or 8)")
    p.set_defaults(func=_loao)

    p = sub.add_parser(
        "finetune", help="adapt a store model to your own area (labelled tiles, unlabelled imagery), within minutes"
    )
    p.add_argument("--model", required=True, help="NAME or NAME:VERSION of the base in the store")
    p.add_argument("--data", action="append", help="labelled tiles: a root (Inria or flat layout), PATH[:WEIGHT]")
    p.add_argument(
        "--unlabelled", action="append",
        help="unlabelled GeoTIFFs (a folder, or a root's images/), PATH[:WEIGHT]: labelled by the base itself (self-training)",
    )  # fmt: skip
    p.add_argument("--name", required=True, help="the model to publish (a new name, or the next version of one)")
    p.add_argument("--store", type=Path, default=Path("model_store"), help="where the base is")
    p.add_argument("--out-store", type=Path, help="where the new version goes (default: --store)")
    p.add_argument("--minutes", type=float, default=10.0, help="time budget on this machine, export included")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("ensemble", help="publish a store version that averages the probabilities of member versions")
    p.add_argument("--name", required=True, help="the model to publish (a new name, or the next version of one)")
    p.add_argument("--member", required=True, action="append", help="NAME:VERSION[@WEIGHT] (repeat; at least two)")
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.set_defaults(func=_ensemble)

    p = sub.add_parser("report", help="every store model scored and costed side by side, as the paper's Table 2")
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--models", action="append", help="NAME[:VERSION][,...] (default: the newest version of every model)")
    p.add_argument("--test-data", type=Path, help="synthetic test cities (test/images, test/gt)")
    p.add_argument("--real-data", action="append", help="real imagery roots (repeatable)")
    p.add_argument("--same-area", action="append", help="CITY+CITY: cities scored as one area (e.g. nepal+banepa)")
    p.add_argument("--no-timing", action="store_true", help="skip timing a 5000 x 5000 tile per model")
    p.add_argument("--rescore", action="store_true", help="score the synthetic test cities even where publish recorded them")
    p.add_argument("--out", type=Path, default=Path("reports"), help="folder for report.md, report.json, report.png")
    p.add_argument(
        "--set-default", action="store_true",
        help="make the model the leave-one-area-out yardstick chooses the store's default",
    )  # fmt: skip
    p.set_defaults(func=_report)
