"""The ``footprints`` command line. This package knows the serving commands (serve,
segment, overlay); installed packages add theirs through the ``footprints.cli``
entry point (the training package adds synth, train, publish, export, evaluate and
baseline). Each subcommand imports what it needs when run, so ``footprints --help``
and the serving commands stay light.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path, PurePosixPath
from typing import Any

from service.allocator import keep_freed_memory
from service.engines.precision import PRECISIONS  # leaf modules: no heavy imports
from service.errors import InputError, NotFoundError

ENTRY_POINTS = "footprints.cli"
# service.engines.ENGINES, without importing the engines package to print --help.
BACKENDS = ("auto", "onnxruntime", "openvino", "torch", "tensorrt", "null")


@dataclass
class Extensions:
    """What other installed packages lend the serving commands."""

    # segment --checkpoint: a training checkpoint -> a backend (path, device)
    open_checkpoint: Callable[[Path, str | None], Any] | None = None
    # batch --gt: {tile: (prediction, reference)} -> the benchmark's per-city table
    evaluate_pairs: Callable[[dict[str, tuple[Path, Path]]], str] | None = None


def add_client_security(p: argparse.ArgumentParser, prefix: str = "", whom: str = "the server") -> None:
    """TLS, mutual TLS and bearer-token flags of a client (``prefix``: e.g. ``model-server-``)."""
    p.add_argument(f"--{prefix}tls-ca", type=Path, help=f"CA certificate that signed {whom}'s: connect with TLS")
    p.add_argument(f"--{prefix}tls-cert", type=Path, help="this client's certificate, for mutual TLS")
    p.add_argument(f"--{prefix}tls-key", type=Path, help="this client's private key, for mutual TLS")
    p.add_argument(f"--{prefix}token-file", type=Path, help=f"file whose first line is the bearer token {whom} expects")


def client_security(args: argparse.Namespace, prefix: str = ""):
    """The :class:`~service.security.ClientSecurity` the flags of :func:`add_client_security` ask for."""
    from service.transport import ClientSecurity, read_token

    p = prefix.replace("-", "_")
    token_file = getattr(args, f"{p}token_file")
    return ClientSecurity(
        ca=getattr(args, f"{p}tls_ca"),
        cert=getattr(args, f"{p}tls_cert"),
        key=getattr(args, f"{p}tls_key"),
        token=read_token(token_file) if token_file else None,
    )


def _segment(args: argparse.Namespace) -> int:
    if args.server:
        return _segment_remote(args)
    from service.outputs.segment import SegmentOptions, segment_file
    from service.tiling.engine import EngineConfig, TilingEngine

    if args.checkpoint:
        ext: Extensions = args.extensions
        if ext.open_checkpoint is None:
            raise InputError("--checkpoint needs the training package, which is not installed; serve a store model with --model")
        backend = ext.open_checkpoint(args.checkpoint, args.device)
    else:
        from service.engines import open_engine
        from service.store.repository import ModelStore

        entry = ModelStore(args.store).find(args.model)
        backend = open_engine(entry, args.backend, device=args.device, precision=args.precision)
    config = EngineConfig(
        window=args.window,
        fit_window=not args.exact_window,
        batch_size=args.batch_size,
        memory_budget_bytes=int(args.memory_budget_gb * 2**30) if args.memory_budget_gb else None,
        tta=args.tta,
        tta_passes=args.tta_passes,
        dual_overlap=args.overlap,
    )
    opts = SegmentOptions(
        threshold=args.threshold,
        gsd_m=args.gsd,
        probabilities=args.probabilities,
        polygons=args.polygons,
        overlay=args.overlay,
        polygon=polygon_args(args),
    )
    summary = segment_file(TilingEngine(backend, config), args.image, args.output, opts)
    print(", ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items()))
    return 0


def _segment_remote(args: argparse.Namespace) -> int:
    import grpc

    from service.client import FootprintsClient

    name, _, version = (args.model or "").partition(":")  # no name: the server's default model
    with FootprintsClient(args.server, client_security(args), timeout=args.timeout) as client:
        try:
            result = client.segment_file(
                args.image,
                args.output,
                model=name,
                version=int(version or 0),
                window=args.window or 0,
                threshold=args.threshold,
                gsd_m=args.gsd,
                tta=args.tta,
                tta_passes=args.tta_passes,
                probabilities=args.probabilities,
                polygons=args.polygons,
                overlay=args.overlay,
                polygon=polygon_args(args),
            )
        except grpc.RpcError as e:
            raise InputError(f"server {args.server} answered {e.code().name}: {e.details()}") from None
    s = result.summary
    if s is None:
        raise InputError(f"server {args.server} ended the stream without a tile summary")
    print(
        f"{PurePosixPath(str(args.image)).name}: {s.width}x{s.height} by {s.model} v{s.model_version} ({s.backend} {s.precision}"
        f"{f', TTA over {s.tta_passes} passes' if s.tta_passes > 1 else ''}), {s.windows} windows of "
        f"{s.window} px, building share {s.building_share:.4f}, {s.timings.total_seconds:.1f} s; mask {args.output}"
    )
    return 0


def _torchserve_archive(args: argparse.Namespace) -> int:
    from service.torchserve.archive import build_archive

    mar = build_archive(args.store, args.model, args.out, args.batch_size, args.max_batch_delay_ms, args.workers)
    print(f"archive {mar}")
    return 0


def _torchserve_start(args: argparse.Namespace) -> int:
    from service.torchserve.runner import start_daemon

    ts = start_daemon(args.store, args.port, args.management_port, args.metrics_port, args.workers, args.job_queue_size)
    print(
        f"torchserve serving {', '.join(ts['models'])} on 127.0.0.1:{ts['port']} (--model-servers torchserve://127.0.0.1:{ts['port']})"
    )
    return 0


def _torchserve_stop(args: argparse.Namespace) -> int:
    from service.torchserve.runner import stop_daemon

    print(f"torchserve stopped (pid {stop_daemon(args.store)})")
    return 0


def _build_engine(args: argparse.Namespace) -> int:
    import glob

    from service.engines.tensorrt.builder import build_engine

    images = sorted(Path(p) for p in glob.glob(args.parity_images)) if args.parity_images else []  # absolute patterns too
    r = build_engine(args.store, args.model, args.precision, args.max_batch, args.max_window, images)
    p = r["parity"]
    profs = ", ".join(f"{x['name']} {x['sides'][0]}-{x['sides'][2]} px" for x in r["profiles"])
    print(
        f"engine {r['file']} ({r['gpu']}, TensorRT {r['tensorrt']}, {r['precision']}) built in {r['build_seconds']} s; "
        f"profiles {profs}; "
        f"parity against ONNX: max |diff| {p['max_abs_diff']:.2e}, mask agreement {p['mask_agreement']:.5f}"
    )
    return 0


def _batch(args: argparse.Namespace) -> int:
    from service.batch.run import Job, run_batch

    ext: Extensions = args.extensions
    if args.gt and ext.evaluate_pairs is None:
        raise InputError("--gt needs the training package (its evaluation), which is not installed")
    job = Job(
        store=str(args.store),
        model=args.model or "",
        backend=args.backend,
        precision=args.precision,
        window=args.window,
        memory_budget_bytes=int(args.memory_budget_gb * 2**30) if args.memory_budget_gb else None,
        probabilities=args.probabilities,
        polygon=polygon_args(args),
        gsd_m=args.gsd,
        threshold=args.threshold,
        tta=args.tta,
        tta_passes=args.tta_passes,
    )
    o = run_batch(args.input, args.out, job, args.workers, args.ray_address, args.dashboard)
    rate = f", {o.megapixels / o.seconds:.1f} Mpx/s" if o.done else ""
    print(f"{len(o.done)} tiles segmented, {len(o.skipped)} already done, {len(o.failed)} failed in {o.seconds:.1f} s{rate}")
    for name, why in sorted(o.failed.items()):
        print(f"  failed {name}: {why}")
    if o.layer is not None:
        print(f"city layer {o.layer}: {o.buildings} buildings")
    if o.stac is not None:
        print(f"STAC collection {o.stac}: an item per tile")
    if args.gt:
        masks = args.out / "masks"
        pairs = {p.name: (p, args.gt / p.name) for p in sorted(masks.glob("*.tif")) if (args.gt / p.name).is_file()}
        if not pairs:
            raise InputError(f"--gt {args.gt}: no reference mask shares a name with the tiles in {masks}")
        assert ext.evaluate_pairs is not None  # checked before the run
        print(ext.evaluate_pairs(pairs))
    return 1 if o.failed else 0


def _cut_and_resolution_args(p: argparse.ArgumentParser) -> None:
    """The decision threshold and the ground resolution: segment and batch take both."""
    p.add_argument("--threshold", type=float, help="decision threshold (default: the model version's, from its manifest)")
    p.add_argument(
        "--gsd", type=float, metavar="M",
        help="metres on the ground per pixel, for a raster without georeference or to override it "
        "(default: from the georeference; the raster is resampled to the model's resolution)",
    )  # fmt: skip


def _tta_args(p: argparse.ArgumentParser) -> None:
    """Test-time augmentation: segment and batch take both."""
    p.add_argument(
        "--tta", action=argparse.BooleanOptionalAction, default=None,
        help="average over the 8 flips and rotations (default: the model's own setting, on for raisa)",
    )  # fmt: skip
    p.add_argument(
        "--tta-passes", type=int, metavar="N",
        help="TTA over 2 (the half turn), 4 (the quarter turns) or 8 passes; implies --tta",
    )  # fmt: skip


def _image_arg(text: str) -> Path | str:
    """A path, or a URL kept as written (a Path would fold its '//')."""
    from service.urls import is_url

    return text if is_url(text) else Path(text)


def _polygon_args(p: argparse.ArgumentParser) -> None:
    """How masks become buildings: segment (in-process and --server) and batch take these."""
    p.add_argument("--min-area", type=float, default=4.0, help="smallest building kept, in m^2")
    p.add_argument("--simplify", type=float, default=0.5, help="outline simplification tolerance, in m")
    p.add_argument(
        "--no-regularize", dest="regularize", action="store_false",
        help="keep outlines as traced (default: squared to their building's orientation, small houses as rectangles)",
    )  # fmt: skip
    p.add_argument("--wgs84", action="store_true", help="GeoJSON in RFC 7946 WGS 84 (lon, lat) instead of the input's CRS")
    p.add_argument(
        "--no-separate", dest="separate", action="store_false",
        help="touching buildings as one outline (default: separated where the probability dips between them)",
    )  # fmt: skip


def polygon_args(args: argparse.Namespace):
    from service.outputs.polygons import PolygonOptions

    return PolygonOptions(args.min_area, args.simplify, args.regularize, args.wgs84, args.separate)


def _tune(args: argparse.Namespace) -> int:
    """Ahead of time (a Docker build, a new machine): measure the window speeds of the
    large-window models and compile every model's windows for a 5000 x 5000 tile into the
    engines' caches, so a server started later measures and compiles nothing."""
    from service.engines import open_engine
    from service.engines.timings import TUNED_TILE, measure, needs_measuring, seconds_per_window
    from service.store.repository import ModelStore
    from service.tiling.engine import EngineConfig, TilingEngine

    store = ModelStore(args.store)
    names = args.models.split(",") if args.models else store.names()
    for name in names:
        entry = store.get(name)
        backend = open_engine(entry, "auto", precision=args.precision)
        what = f"{entry.name} v{entry.version} ({backend.engine} {backend.precision})"
        if needs_measuring(entry):
            seconds = measure(backend, entry)
            print(f"{what}: " + ", ".join(f"{side} px {t:.3f} s" for side, t in sorted(seconds.items())), flush=True)
        else:
            plan = TilingEngine(backend, EngineConfig()).plan(TUNED_TILE, TUNED_TILE)
            t = seconds_per_window(backend, plan.window)  # compiles the plan's window into the cache
            print(
                f"{what}: plan fixed by its manifest, {len(plan.windows)} windows of {plan.window} px, {t:.3f} s each", flush=True
            )
        backend.close()
    return 0


def _overlay(args: argparse.Namespace) -> int:
    from service.outputs.overlay import write_overlay

    print(f"overlay {write_overlay(args.image, args.mask, args.output, ref=args.reference)}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from service.outputs.diff import LAYERS, diff

    c = diff(args.buildings, args.reference, args.out, args.tiles, args.changed_iou, args.match_iou)
    print(f"ours {c['ours']}, theirs {c['theirs']}: unchanged {c['unchanged']}, " + ", ".join(f"{n} {c[n]}" for n in LAYERS))
    for tile, counts in c["tiles"].items():
        print(f"  {tile}: " + ", ".join(f"{n} {counts[n]}" for n in LAYERS))
    print(f"layers: {', '.join(str(args.out / f'{n}.geojson') for n in LAYERS)}; counts: {args.out / 'counts.json'}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from service.api import logs
    from service.api.server import ServerConfig, serve_forever
    from service.api.servicer import Limits
    from service.remote.servers import Link

    logs.configure(args.log_format, args.log_level)
    cfg = ServerConfig(
        store=args.store,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port if args.metrics_port >= 0 else None,
        models=args.models.split(",") if args.models else None,
        backend=args.backend,
        precision=args.precision,
        tune=args.tune,
        max_queue_delay_ms=args.max_queue_delay_ms,
        max_queued_windows=args.max_queued_windows,
        window_order=args.window_order,
        limits=Limits(
            max_tiles_in_flight=args.max_tiles,
            max_raster_side=args.max_side,
            max_batch=args.max_batch,
            max_window=args.max_window,
            upload_idle_s=args.upload_idle_timeout,
            upload_s=args.upload_timeout,
            max_tiles_per_client=args.max_tiles_per_client,
            tile_memory_bytes=int(args.tile_memory_gb * 2**30) if args.tile_memory_gb else None,
            allow_url_prefixes=tuple(args.allow_url_prefix or ()),
        ),
        grace_s=args.grace,
        model_servers=args.model_servers.split(",") if args.model_servers else [],
        link=Link(
            timeout_s=args.model_server_timeout,
            retries=args.model_server_retries,
            security=client_security(args, "model-server-"),
        ),
        memory_budget_bytes=int(args.memory_budget_gb * 2**30) if args.memory_budget_gb else None,
        watch_store_s=args.watch_store,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        tokens_file=args.tokens_file,
    )
    asyncio.run(serve_forever(cfg))
    return 0


def _health(args: argparse.Namespace) -> int:
    """The container's health check: SERVING -> 0; anything else, or no answer -> 1."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(args.server) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as e:
            print(f"{args.server}: {e.code().name}: {e.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.server}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _load_extensions(sub: Any, ext: Extensions) -> None:
    """Let installed packages register their subcommands; a package whose code is
    absent (a serving-only install) adds nothing."""
    for point in entry_points(group=ENTRY_POINTS):
        try:
            register = point.load()
        except ModuleNotFoundError:
            continue
        register(sub, ext)


def build_parser(ext: Extensions | None = None) -> argparse.ArgumentParser:
    ext = ext if ext is not None else Extensions()
    parser = argparse.ArgumentParser(prog="footprints", description="Building footprints from aerial imagery.")
    parser.set_defaults(extensions=ext)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment a GeoTIFF into a georeferenced building mask")
    p.add_argument(
        "image", type=_image_arg,
        help="input GeoTIFF: uint8 RGB, or RGBA with alpha; a path, or an https:// or s3:// URL (read by range requests)",
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, type=Path, help="output mask GeoTIFF (0/255)")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--checkpoint", type=Path, help="training checkpoint (.pt), run with PyTorch in-process (needs the training package)"
    )
    p.add_argument(
        "--model", help="NAME or NAME:VERSION, from the store in-process or on --server (default: the store's default model)"
    )
    which.add_argument("--server", help="HOST:PORT of a footprints server: stream the tile there")
    p.add_argument("--timeout", type=float, default=600.0, help="with --server: the tile's deadline, s")
    add_client_security(p)
    p.add_argument("--store", type=Path, default=Path("model_store"), help="model store folder (in-process)")
    p.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="with --model; auto: the engine this machine's facts predict"
    )
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto: bf16 where the CPU has it (OpenVINO)")
    p.add_argument(
        "--window", type=int, help="large: input side (2636 on GPU, the measured CPU default); dual: output side (384)"
    )
    p.add_argument(
        "--exact-window", action="store_true", help="use --window as given instead of the smallest window with the same count"
    )
    p.add_argument("--batch-size", type=int, default=1, help="windows per model call (capped by the memory budget)")
    p.add_argument("--memory-budget-gb", type=float, help="cap on the memory windows in flight may take (default: half the RAM)")
    p.add_argument("--overlap", type=int, default=64, help="dual: px of overlap blended between windows")
    _tta_args(p)
    _cut_and_resolution_args(p)
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--probabilities", type=Path, help="also write probabilities (uint8 0-255) here")
    p.add_argument("--polygons", type=Path, help="also write the buildings (GeoJSON, input CRS or --wgs84) here")
    _polygon_args(p)
    p.add_argument("--overlay", type=Path, help="also write an overlay PNG here")
    p.set_defaults(func=_segment)

    p = sub.add_parser("overlay", help="draw a mask (and its reference) over an image as a PNG")
    p.add_argument("image", type=Path)
    p.add_argument("mask", type=Path)
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--reference", type=Path, help="reference mask: hits green, false alarms red, misses blue")
    p.set_defaults(func=_overlay)

    p = sub.add_parser("diff", help="our buildings against an existing map: new, missing and changed layers, counted per tile")
    p.add_argument("--buildings", required=True, type=Path, help="ours: GeoJSON or GeoPackage (segment --polygons, batch)")
    p.add_argument("--reference", required=True, type=Path, help="theirs: an OSM extract or a cadastre (GeoJSON, GeoPackage)")
    p.add_argument("--out", required=True, type=Path, help="folder for new/missing/changed.geojson and counts.json")
    p.add_argument("--tiles", type=Path, help="GeoTIFFs whose extents count the layers per tile (inputs or masks)")
    p.add_argument("--changed-iou", type=float, default=0.5, help="a matched building below this IoU is changed")
    p.add_argument("--match-iou", type=float, default=0.1, help="buildings overlapping less than this do not match")
    p.set_defaults(func=_diff)

    p = sub.add_parser("serve", help="run the gRPC service (SegmentTile, InferWindows, ListModels, health, reflection)")
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051, help="0: any free port")
    p.add_argument("--metrics-port", type=int, default=9100, help="Prometheus /metrics port (0: any free, -1: off)")
    p.add_argument(
        "--models",
        help="comma-separated model names (default: all in the store, newest versions; the store's DEFAULT answers requests that name none)",
    )
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: the engine this machine's facts predict")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto: bf16 where the CPU has it (OpenVINO)")
    p.add_argument(
        "--tune", choices=("background", "off"), default="background",
        help="measure large-window models' window speeds in a child process if not yet measured here",
    )  # fmt: skip
    p.add_argument("--max-batch", type=int, default=4, help="windows per model call, across requests")
    p.add_argument("--max-queue-delay-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--max-queued-windows", type=int, default=64, help="past this, RESOURCE_EXHAUSTED")
    p.add_argument(
        "--window-order", choices=("oldest-tile", "arrival"), default="oldest-tile",
        help="which windows a batch takes: the oldest tile's (every 4th batch the longest-waiting), or first come first served",
    )  # fmt: skip
    p.add_argument("--max-tiles", type=int, default=4, help="tiles in flight at once; past this, RESOURCE_EXHAUSTED")
    p.add_argument("--max-side", type=int, default=10000, help="largest raster side accepted, px")
    p.add_argument("--grace", type=float, default=30.0, help="seconds in-flight tiles get to finish on SIGTERM")
    p.add_argument("--max-window", type=int, default=2688, help="largest window side InferWindows takes, px (dual: the context)")
    p.add_argument("--upload-idle-timeout", type=float, default=30.0, help="an upload silent this long is given up, s")
    p.add_argument(
        "--upload-timeout", type=float, default=60.0,
        help="an upload not whole this long after its header is given up, s per 100 MB declared",
    )  # fmt: skip
    p.add_argument("--max-tiles-per-client", type=int, default=2, help="tiles in flight per client (token, else address)")
    p.add_argument("--tile-memory-gb", type=float, help="memory the tiles in flight may hold (default: a quarter of the RAM)")
    p.add_argument(
        "--allow-url-prefix", action="append", metavar="PREFIX",
        help="a request may name a GeoTIFF URL under this prefix (https://host/folder/, s3://bucket/; repeat); "
        "any other URL is refused with PERMISSION_DENIED (default: none, bytes only)",
    )  # fmt: skip
    p.add_argument(
        "--model-servers", help="HOST:PORT,... or torchserve://HOST:PORT: run windows there (health-checked, with failover)"
    )
    p.add_argument("--model-server-timeout", type=float, default=60.0, help="deadline of one window batch on a model server, s")
    p.add_argument("--model-server-retries", type=int, default=2, help="other model servers a failed batch is tried on")
    add_client_security(p, "model-server-", "the model servers")
    p.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate chain (PEM)")
    p.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    p.add_argument("--tls-client-ca", type=Path, help="mutual TLS: accept only clients with a certificate this CA signed")
    p.add_argument("--tokens-file", type=Path, help="accept only calls with one of these bearer tokens (one per line)")
    p.add_argument("--watch-store", type=float, default=0.0, help="look for added or removed versions every N s (0: on SIGHUP)")
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="json: one JSON object per line")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--memory-budget-gb",
        type=float,
        help="memory all windows in flight may take, every tile and model together (default: half the RAM)",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("health", help="ask a server's grpc.health.v1 service; exit 0 only when it answers SERVING")
    p.add_argument(
        "--server", default=os.environ.get("FOOTPRINTS_HEALTH_SERVER", "127.0.0.1:50051"),
        help="HOST:PORT (default: $FOOTPRINTS_HEALTH_SERVER, else 127.0.0.1:50051: a container's health check)",
    )  # fmt: skip
    p.add_argument("--service", default="", help="the service to ask about ('': the server as a whole)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    p.set_defaults(func=_health)

    p = sub.add_parser("tune", help="measure window speeds and compile engines ahead of time (a Docker build, a new machine)")
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--models", help="comma-separated model names (default: every model in the store, newest versions)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.set_defaults(func=_tune)

    p = sub.add_parser("batch", help="segment a city's tiles on Ray: masks, polygons, one buildings layer; resumable")
    p.add_argument("--input", required=True, help="folder of tiles (or an Inria root's images/), a glob, or a file listing tiles")
    p.add_argument("--out", type=Path, required=True, help="folder for masks/, polygons/, buildings.gpkg and the manifest")
    p.add_argument("--model", help="NAME or NAME:VERSION (default: the store's default)")
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--window", type=int, help="as for segment (default: the measured best)")
    p.add_argument("--workers", type=int, help="Ray workers, one model each (default: the cores here, or the cluster's CPUs)")
    p.add_argument("--ray-address", help="a Ray cluster (ray://HOST:10001 or HOST:6379); default: Ray embedded here")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard (embedded Ray only)")
    p.add_argument("--memory-budget-gb", type=float, help="window memory of all workers together (default: half the RAM)")
    p.add_argument("--probabilities", action="store_true", help="also write probability GeoTIFFs")
    _polygon_args(p)
    _cut_and_resolution_args(p)
    _tta_args(p)
    p.add_argument("--gt", type=Path, help="reference masks (same names): print the benchmark's per-city table")
    p.set_defaults(func=_batch)

    p = sub.add_parser("build-engine", help="compile a store version's ONNX graph into a TensorRT engine for this GPU")
    p.add_argument("--model", required=True, help="NAME or NAME:VERSION")
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    p.add_argument("--max-batch", type=int, default=4, help="largest batch of the small-window profile (large: half)")
    p.add_argument("--max-window", type=int, default=2688, help="largest window side the engine takes, px")
    p.add_argument("--parity-images", help="glob of GeoTIFF tiles whose centre windows check the engine against ONNX")
    p.set_defaults(func=_build_engine)

    p = sub.add_parser("torchserve", help="our models on TorchServe: build archives, start and stop a TorchServe")
    ts = p.add_subparsers(dest="action", required=True)
    a = ts.add_parser("archive", help="write a .mar of a store version (exported program, manifest, our handler)")
    a.add_argument("--model", required=True, help="NAME or NAME:VERSION")
    a.add_argument("--store", type=Path, default=Path("model_store"))
    a.add_argument("--out", type=Path, required=True, help="folder for the .mar (TorchServe's model store)")
    a.add_argument("--batch-size", type=int, default=4, help="TorchServe's batchSize for this model")
    a.add_argument("--max-batch-delay-ms", type=int, default=5, help="TorchServe's maxBatchDelay")
    a.add_argument("--workers", type=int, default=1)
    a.set_defaults(func=_torchserve_archive)
    a = ts.add_parser("start", help="start TorchServe over a folder of archives; returns once every model is ready")
    a.add_argument("--store", type=Path, required=True, help="folder of .mar archives")
    a.add_argument("--port", type=int, default=8080, help="inference API port (0: any free)")
    a.add_argument("--management-port", type=int, default=8081)
    a.add_argument("--metrics-port", type=int, default=8082)
    a.add_argument("--workers", type=int, default=1, help="workers per model")
    a.add_argument("--job-queue-size", type=int, default=64)
    a.set_defaults(func=_torchserve_start)
    a = ts.add_parser("stop", help="stop the TorchServe started over this folder")
    a.add_argument("--store", type=Path, required=True)
    a.set_defaults(func=_torchserve_stop)

    _load_extensions(sub, ext)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Every subcommand runs networks on big tensors: 2x faster training steps (see memory.py).
    keep_freed_memory()
    try:
        return int(args.func(args))
    except (InputError, NotFoundError, FileNotFoundError) as e:
        # Bad input is the user's to fix: one clear line, no traceback.
        print(f"footprints {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
