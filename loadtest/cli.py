"""``footprints loadtest``: registered through the ``footprints.cli`` entry point."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from service.cli import add_client_security, client_security
from service.errors import InputError

SOAK_SECONDS = 1800.0


def _tiles(args: argparse.Namespace):
    from .tiles import load_folder, synthetic

    if args.tiles:
        return load_folder(args.tiles, args.limit)
    folder = Path(tempfile.gettempdir()) / "footprints-loadtest-tiles"
    return synthetic(folder, args.synthetic, args.size)


def _soak_concurrency(args: argparse.Namespace) -> int:
    """--soak runs at the saturation point: a report's (--saturation-from), else the
    one concurrency given."""
    if args.saturation_from:
        sat = json.loads(Path(args.saturation_from).read_text()).get("saturation")
        if not sat:
            raise InputError(f"{args.saturation_from} has no saturation point (run closed-loop steps first)")
        return int(sat["concurrency"])
    levels = _levels(args.concurrency)
    if len(levels) != 1:
        raise InputError("--soak needs one --concurrency (the saturation point) or --saturation-from REPORT.json")
    return levels[0]


def _levels(text: str | None) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",")] if text else []
    except ValueError:
        raise InputError(f"--concurrency takes a comma-separated list of integers, got {text!r}") from None
    if any(c < 1 for c in levels):
        raise InputError(f"--concurrency levels must be at least 1, got {text!r}")
    return levels


def run(args: argparse.Namespace) -> int:
    import grpc

    from service.client import FootprintsClient

    from . import report
    from .drivers import Driver
    from .scrape import Scraper

    if args.duration is None and args.count is None:
        args.duration = SOAK_SECONDS if args.soak else 60.0
    levels = [_soak_concurrency(args)] if args.soak else _levels(args.concurrency)
    if not levels and args.rate is None and args.rate_windows is None:
        raise InputError("nothing to run: give --concurrency, --rate or --rate-windows (or --soak)")
    security = client_security(args)

    def make_client() -> FootprintsClient:
        return FootprintsClient(args.server, security)

    with make_client() as probe:  # fail fast, in one line, on a server that is not there
        try:
            probe.list_models(timeout=10)
        except grpc.RpcError as e:
            raise InputError(f"server {args.server} answered {e.code().name}: {e.details()}") from None
    tiles = _tiles(args)
    driver = Driver(make_client, tiles, args.model or "", args.timeout)
    warm = driver.warm_up(args.warmup)
    bad = [c for c in warm if c.code != "OK"]
    if bad:
        raise InputError(f"warm-up tile failed: {bad[0].code} {bad[0].message}")
    windows_per_tile = warm[-1].windows if warm else None
    scraper = Scraper(args.metrics, driver.t0, args.scrape_every).start() if args.metrics else None
    steps: list[dict] = []
    samples = scraper.samples if scraper else []
    try:
        for c in levels:
            calls = driver.closed(c, args.duration, args.count, step="soak" if args.soak else None)
            steps.append(report.step_summary(calls[0].step, calls, samples))
        rate = args.rate
        if args.rate_windows is not None:
            if not windows_per_tile:
                raise InputError("--rate-windows needs the windows per tile from a warm-up call (--warmup 1 or more)")
            rate = args.rate_windows / windows_per_tile
        if rate is not None and not args.soak:
            calls = driver.open(rate, args.duration, args.count, seed=args.seed)
            steps.append(report.step_summary(calls[0].step, calls, samples))
    finally:
        if scraper:
            scraper.stop()
    soak = None
    if args.soak:
        trend = report.rss_trend(samples)
        soak = {
            "concurrency": levels[0],
            "seconds": steps[0]["seconds"],
            "errors": sum(steps[0]["errors"].values()),
            "rss": trend,
        }
    meta = {
        "server": args.server,
        "model": args.model or "(server default)",
        "tiles": [t.name for t in tiles],
        "tile_px": f"{tiles[0].width}x{tiles[0].height}",
        "windows_per_tile": windows_per_tile,
        "duration_s": args.duration,
        "count": args.count,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    page = report.write(args.out, meta, driver.calls, samples, steps, soak)
    print(report.table(steps))
    sat = report.saturation(steps)
    if sat:
        print(f"saturation: {sat['concurrency']} clients, {sat['tiles_per_s']:.3f} tiles/s, p99 {sat['p99_s']:.2f} s")
    if soak:
        rss = soak["rss"]
        said = (
            "too short for a trend"
            if rss is None
            else f"RSS {rss['first_mb']:.0f} -> {rss['last_mb']:.0f} MB ({rss['change']:+.1%})"
        )
        print(f"soak: {soak['errors']} errors in {soak['seconds']:.0f} s, {said}")
    print(f"report {page}")
    return 0


def register(sub: Any, ext: Any) -> None:
    p = sub.add_parser("loadtest", help="drive a running server with tiles; report throughput, latency and errors")
    p.add_argument("--server", required=True, help="HOST:PORT of a footprints server")
    p.add_argument("--metrics", help="the server's Prometheus URL (http://HOST:PORT/metrics): its own view, sampled")
    p.add_argument("--scrape-every", type=float, default=2.0, help="seconds between /metrics samples")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--tiles", type=Path, help="folder of GeoTIFF tiles to send (in turn)")
    which.add_argument("--synthetic", type=int, default=4, help="else: make this many synthetic tiles (default 4)")
    p.add_argument("--size", type=int, default=5000, help="side of the synthetic tiles, px")
    p.add_argument("--limit", type=int, help="at most this many tiles from --tiles")
    p.add_argument("--model", help="model name (default: the server's default)")
    p.add_argument("--concurrency", default="1,2,4,8", help="closed loop: clients per step, e.g. 1,2,4,8")
    p.add_argument("--rate", type=float, help="open loop: tiles per second (Poisson arrivals)")
    p.add_argument(
        "--rate-windows", type=float, help="open loop: model windows per second (converted with the warm-up's windows per tile)"
    )
    p.add_argument("--duration", type=float, help="seconds per step (default 60; --soak: 1800)")
    p.add_argument("--count", type=int, help="tiles per step instead of a duration")
    p.add_argument("--warmup", type=int, default=2, help="tiles sent first and not counted")
    p.add_argument("--timeout", type=float, default=600.0, help="deadline of each tile call, s")
    p.add_argument("--soak", action="store_true", help="one long step at the saturation point: errors and the server's RSS trend")
    p.add_argument("--saturation-from", type=Path, help="--soak: take the concurrency from this report.json")
    p.add_argument("--seed", type=int, default=0, help="open loop: arrival times' seed")
    p.add_argument("--out", type=Path, default=Path("loadtest-report"), help="folder for report.json, report.html and charts")
    add_client_security(p)
    p.set_defaults(func=run)
