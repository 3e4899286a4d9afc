"""The ``footprints`` command line. Each subcommand imports what it needs when run,
so ``footprints --help`` and the serving commands stay light."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import InputError, NotFoundError  # a leaf module: no heavy imports
from .memory import keep_freed_memory


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


def _segment(args: argparse.Namespace) -> int:
    if args.server:
        return _segment_remote(args)
    from .backends.torch_backend import TorchBackend
    from .outputs import SegmentOptions, segment_file
    from .tiler import EngineConfig, TilingEngine

    if args.checkpoint:
        backend = TorchBackend.from_checkpoint(args.checkpoint, device=args.device)
    elif not args.model:
        raise InputError("say which model: --checkpoint FILE, --model NAME (store), or --server HOST:PORT")
    else:
        from .backends import open_backend
        from .store import ModelStore

        name, _, version = args.model.partition(":")
        entry = ModelStore(args.store).get(name, int(version) if version else None)
        backend = open_backend(entry, args.backend, device=args.device)
    config = EngineConfig(
        window=args.window,
        fit_window=not args.exact_window,
        batch_size=args.batch_size,
        memory_budget_bytes=int(args.memory_budget_gb * 2**30) if args.memory_budget_gb else None,
        tta=args.tta,
        dual_overlap=args.overlap,
    )
    opts = SegmentOptions(
        threshold=args.threshold,
        probabilities=args.probabilities,
        polygons=args.polygons,
        overlay=args.overlay,
        min_area_m2=args.min_area,
        simplify_m=args.simplify,
    )
    summary = segment_file(TilingEngine(backend, config), args.image, args.output, opts)
    print(", ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items()))
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.loop import train

    cfg = load_config(args.config)
    meta = train(cfg, args.data, args.out, resume=args.resume)
    overall = meta.get("metrics", {}).get("overall")
    if overall:
        print(f"validation: IoU {100 * overall['iou']:.2f} %, accuracy {100 * overall['accuracy']:.2f} %")
    print(f"model: {args.out / 'model.pt'}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from training.publish import publish

    metrics = publish(
        args.checkpoint, args.store, args.name, args.version, args.test_data, args.real_data,
        commands=args.command or [], train_minutes=args.train_minutes,
    )
    overall = metrics["synthetic_test"]["overall"]
    print(f"{args.name} v{args.version}: synthetic test IoU {100 * overall['iou']:.2f} %, accuracy {100 * overall['accuracy']:.2f} %")
    if metrics["real_oam"]:
        real = metrics["real_oam"]["overall"]
        print(f"real imagery: IoU {100 * real['iou']:.2f} %, accuracy {100 * real['accuracy']:.2f} %")
    print(f"card: {args.store / args.name / 'MODEL_CARD.md'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.export import export

    m = export(args.checkpoint, args.store, args.name, args.version)
    print(f"exported {args.name} v{m['version']} to {args.store / args.name / str(m['version'])}: ONNX Runtime vs PyTorch "
          f"max |diff| {m['parity_max_abs_diff']:.2e} on {m['parity_window_px']}-px windows of "
          f"{', '.join(m['parity_windows'])} ({100 * m['parity_building_share']:.1f} % building)")
    return 0


def _overlay(args: argparse.Namespace) -> int:
    from .overlay import write_overlay

    print(f"overlay {write_overlay(args.image, args.mask, args.output, ref=args.reference)}")
    return 0


def _segment_remote(args: argparse.Namespace) -> int:
    import grpc

    from .client import FootprintsClient

    name, _, version = (args.model or "amll").partition(":")
    with FootprintsClient(args.server) as client:
        try:
            result = client.segment_file(
                args.image, args.output, model=name, version=int(version or 0), window=args.window or 0,
                threshold=args.threshold, tta=args.tta, probabilities=args.probabilities, polygons=args.polygons,
                overlay=args.overlay,
            )
        except grpc.RpcError as e:
            raise InputError(f"server {args.server} answered {e.code().name}: {e.details()}") from None
    s = result.summary
    print(f"{args.image.name}: {s.width}x{s.height} by {s.model} v{s.model_version} ({s.backend}), {s.windows} windows of "
          f"{s.window} px, building share {s.building_share:.4f}, {s.timings.total_seconds:.1f} s; mask {args.output}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from .api import Limits
    from .server import ServerConfig, serve_forever

    cfg = ServerConfig(
        store=args.store, host=args.host, port=args.port, metrics_port=args.metrics_port if args.metrics_port >= 0 else None,
        models=args.models.split(",") if args.models else None, backend=args.backend, max_batch=args.max_batch,
        max_queue_delay_ms=args.max_queue_delay_ms, max_queued_windows=args.max_queued_windows,
        limits=Limits(max_tiles_in_flight=args.max_tiles, max_raster_side=args.max_side, max_batch=args.max_batch),
        grace_s=args.grace, model_servers=args.model_servers.split(",") if args.model_servers else [],
    )
    asyncio.run(serve_forever(cfg))
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

    p = sub.add_parser("segment", help="segment a GeoTIFF into a georeferenced building mask")
    p.add_argument("image", type=Path, help="input GeoTIFF: uint8 RGB, or RGBA with alpha")
    p.add_argument("-o", "--output", required=True, type=Path, help="output mask GeoTIFF (0/255)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=Path, help="footprints checkpoint (.pt), run with PyTorch in-process")
    p.add_argument("--model", help="NAME or NAME:VERSION: from the store in-process, or on --server (default amll)")
    which.add_argument("--server", help="HOST:PORT of a footprints server: stream the tile there")
    p.add_argument("--store", type=Path, default=Path("model_store"), help="model store folder (with --model)")
    p.add_argument("--backend", choices=["onnxruntime", "torch"], default="onnxruntime", help="with --model")
    p.add_argument("--window", type=int, help="large: input side (2636 on GPU, the measured CPU default); dual: output side (384)")
    p.add_argument("--exact-window", action="store_true", help="use --window as given instead of the smallest window with the same count")
    p.add_argument("--batch-size", type=int, default=1, help="windows per model call (capped by the memory budget)")
    p.add_argument("--memory-budget-gb", type=float, help="cap on the memory windows in flight may take (default: half the RAM)")
    p.add_argument("--overlap", type=int, default=64, help="dual: px of overlap blended between windows")
    p.add_argument("--tta", action="store_true", help="average over the 8 flips and rotations")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--probabilities", type=Path, help="also write probabilities (uint8 0-255) here")
    p.add_argument("--polygons", type=Path, help="also write building polygons (GeoJSON, input CRS) here")
    p.add_argument("--min-area", type=float, default=4.0, help="smallest polygon kept, in m^2")
    p.add_argument("--simplify", type=float, default=0.5, help="polygon simplification tolerance, in m")
    p.add_argument("--overlay", type=Path, help="also write an overlay PNG here")
    p.set_defaults(func=_segment)

    p = sub.add_parser("train", help="train a network by a config (also under torchrun for DDP)")
    p.add_argument("--config", required=True, type=Path, help="training/configs/<name>.yaml")
    p.add_argument("--data", required=True, type=Path, help="dataset root in the Inria layout")
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, log.csv, curves.png)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.set_defaults(func=_train)

    p = sub.add_parser("publish", help="score a trained model and put it in the model store with its card")
    p.add_argument("--checkpoint", required=True, type=Path, help="RUN_DIR/model.pt")
    p.add_argument("--name", required=True, help="model name in the store (e.g. amll)")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--test-data", required=True, type=Path, help="dataset with held-out test cities (test/images, test/gt)")
    p.add_argument("--real-data", type=Path, help="real imagery in the Inria layout (e.g. ../shared/data/real-oam)")
    p.add_argument("--command", action="append", help="a command that produced the model (repeatable; goes in the card)")
    p.add_argument("--train-minutes", type=float, help="wall-clock training time, for the card")
    p.set_defaults(func=_publish)

    p = sub.add_parser("export", help="export a checkpoint to ONNX in the versioned model store (parity-checked)")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--version", type=int, help="default: the next free version")
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.set_defaults(func=_export)

    p = sub.add_parser("overlay", help="draw a mask (and its reference) over an image as a PNG")
    p.add_argument("image", type=Path)
    p.add_argument("mask", type=Path)
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--reference", type=Path, help="reference mask: hits green, false alarms red, misses blue")
    p.set_defaults(func=_overlay)

    p = sub.add_parser("serve", help="run the gRPC service (SegmentTile, InferWindows, ListModels, health, reflection)")
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051, help="0: any free port")
    p.add_argument("--metrics-port", type=int, default=9100, help="Prometheus /metrics port (0: any free, -1: off)")
    p.add_argument("--models", help="comma-separated model names (default: all in the store, newest versions)")
    p.add_argument("--backend", choices=["onnxruntime", "torch"], default="onnxruntime")
    p.add_argument("--max-batch", type=int, default=4, help="windows per model call, across requests")
    p.add_argument("--max-queue-delay-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--max-queued-windows", type=int, default=64, help="past this, RESOURCE_EXHAUSTED")
    p.add_argument("--max-tiles", type=int, default=4, help="tiles in flight at once; past this, RESOURCE_EXHAUSTED")
    p.add_argument("--max-side", type=int, default=10000, help="largest raster side accepted, px")
    p.add_argument("--grace", type=float, default=30.0, help="seconds in-flight tiles get to finish on SIGTERM")
    p.add_argument("--model-servers", help="HOST:PORT,...: run windows on these servers' InferWindows")
    p.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Every subcommand runs networks on big tensors: 2x faster training steps (see memory.py).
    keep_freed_memory()
    try:
        return args.func(args)
    except (InputError, NotFoundError, FileNotFoundError) as e:
        # Bad input is the user's to fix: one clear line, no traceback.
        print(f"footprints {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
