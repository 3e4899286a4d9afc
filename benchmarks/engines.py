"""Every engine on every store model, against this CPU's compute floor, in one run.

1. The GEMM rate of this CPU in fp32 and in bf16 (a 4096^3 MatMul through OpenVINO's
   CPU plugin, i.e. oneDNN; median of 5): the floor of any figure below is
   2 x MACs / that rate.
2. Per model (newest version of each) and engine (PyTorch eager on the exported
   program, torch.compile of it, ONNX Runtime, OpenVINO fp32, OpenVINO bf16) and
   window size (the model's default and the one ``--backend auto`` cuts a 5000-px tile
   into): seconds per window (median), output Mpx/s, peak RSS (each engine in a fresh
   child process), the share of mask pixels that agree with fp32 PyTorch eager, and
   seconds / floor.
3. Per tile (the default model and NUS by default): one 5000 x 5000 tile through
   ``--backend auto`` in-process and through a ``footprints serve`` process over gRPC,
   the mask's agreement with fp32 PyTorch eager on the same tile, and seconds / floor
   where the floor is the MACs the plan computes (overlaps included) / bf16 GEMM rate.

Writes benchmarks/results/engines.json and engines.png and prints the tables.

    .venv/bin/python benchmarks/engines.py [--models effnet,amll] [--tile-models effnet,nus] [--size 5000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

# openvino-int8 runs a version's INT8 graph (check-precision --int8); a version without
# one, or whose one failed its gate, is listed with the reason.
ENGINES = ("torch-eager", "torch-compile", "onnxruntime-fp32", "openvino-fp32", "openvino-bf16", "openvino-int8")


def gemm_rates(n: int = 4096, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of an n^3 MatMul through oneDNN (OpenVINO's CPU plugin), fp32 and bf16,
    and int8 (the same MatMul quantised by NNCF, as the models' INT8 graphs are)."""
    import openvino as ov
    from openvino import opset13 as ops

    from service.machine import available_cores

    core = ov.Core()
    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32)
    model = ov.Model([ops.matmul(a, ops.constant(rng.random((n, n), dtype=np.float32)), False, False)], [a])
    x = rng.random((n, n), dtype=np.float32)
    rates = {}
    graphs = {"fp32": model, "bf16": model}
    try:
        import nncf

        graphs["int8"] = nncf.quantize(model, nncf.Dataset([x]), subset_size=1)
    except ImportError:
        pass
    for precision, hint in (("fp32", "f32"), ("bf16", "bf16"), ("int8", "f32")):
        if precision not in graphs:
            continue
        cfg = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": available_cores()}
        request = core.compile_model(graphs[precision], "CPU", cfg).create_infer_request()
        request.infer({0: x})
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            request.infer({0: x})
            times.append(time.perf_counter() - t0)
        rates[precision] = 2 * n**3 / statistics.median(times) / 1e9
    return rates


def _open(entry, engine: str):
    from service.engines import open_engine

    if engine.startswith("torch"):
        backend = open_engine(entry, "torch", device="cpu")
        if engine == "torch-compile":
            import torch

            backend.module = torch.compile(backend.module)
        return backend
    kind, precision = engine.split("-")
    return open_engine(entry, kind, precision=precision)


def _window_job(store: str, name: str, engine: str, side: int, crops: list[np.ndarray], repeats: int, q) -> None:
    """In a fresh process, so the peak RSS is this engine's alone."""
    try:
        from service.store.repository import ModelStore

        entry = ModelStore(Path(store)).get(name)
        t0 = time.perf_counter()
        backend = _open(entry, engine)
        probs = backend.infer(crops)  # warm-up: compiles this shape
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            backend.infer(crops)
            times.append(time.perf_counter() - t0)
        q.put({"seconds": statistics.median(times), "first_call_s": first, "peak_rss_mb": _report.peak_rss_mb(), "probs": probs})
    except Exception as e:  # reported as a row, not a crash of the whole run
        q.put({"error": f"{type(e).__name__}: {e}"})


def _in_child(target, *args) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    out: dict[str, Any] = q.get()
    p.join()
    return out


def _crops(image: Path, side: int, geometry) -> list[np.ndarray]:
    """A window of a synthetic city tile (real pixels: noise hides precision effects),
    cut as the model's geometry reads one."""
    from service.rasters import RGBRaster

    with RGBRaster(image) as src:
        n = 2 * side
        r = c = max(0, (min(src.height, src.width) - n) // 2)
        return geometry.split(src.read(r, c, n)[None], side)


def window_macs(entry, side: int) -> int:
    from training.networks.cost import window_cost
    from training.networks.model import load_checkpoint

    model, _ = load_checkpoint(entry.verify("model.pt"))
    return int(window_cost(model, tuple((1, 3, s, s) for s in entry.geometry.input_sides(side)))["macs"])


def _kept(entry, side: int) -> int:
    """Output pixels along an axis a window of ``side`` contributes to a tile (margins dropped)."""
    return entry.geometry.kept_side(side)


def window_rows(store: Path, names: list[str], engines: list[str], image: Path, rates: dict[str, float]) -> list[dict]:
    from service.engines import open_engine
    from service.store.repository import ModelStore
    from service.tiling.engine import EngineConfig, TilingEngine

    rows = []
    for name in names:
        entry = ModelStore(store).get(name)
        tuned = TilingEngine(open_engine(entry, "auto"), EngineConfig()).plan(5000, 5000).window
        for side in sorted({entry.geometry.default_window("cpu"), tuned}):
            crops = _crops(image, side, entry.geometry)
            macs = window_macs(entry, side)
            reference = None
            for engine in engines:
                r = _in_child(_window_job, str(store), name, engine, side, crops, 3 if macs < 3e11 else 2)
                row = {"model": f"{name} v{entry.version}", "engine": engine, "side": side}
                if "error" in r:
                    rows.append({**row, "error": r["error"]})
                    print(f"{name} {engine} {side}: {r['error']}", flush=True)
                    continue
                if engine == "torch-eager":
                    reference = r["probs"]
                agree = float(np.mean((r["probs"] > 0.5) == (reference > 0.5))) if reference is not None else None
                floor = 2 * macs / (rates.get(engine.rsplit("-", 1)[-1], rates["fp32"]) * 1e9)
                rows.append(
                    {
                        **row,
                        "gmac": macs / 1e9,
                        "seconds": r["seconds"],
                        "first_call_s": r["first_call_s"],
                        "out_mpx_per_s": _kept(entry, side) ** 2 / r["seconds"] / 1e6,
                        "peak_rss_mb": r["peak_rss_mb"],
                        "mask_agreement": agree,
                        "x_floor": r["seconds"] / floor,
                        "x_bf16_floor": r["seconds"] / (2 * macs / (rates["bf16"] * 1e9)),
                    }
                )
                print(f"{name} {engine} {side}: {r['seconds']:.3f} s, {rows[-1]['x_floor']:.2f}x its floor", flush=True)
    return rows


def _tile_job(store: str, name: str, image: str, backend_kind: str, q) -> None:
    try:
        import rasterio

        from service.engines import open_engine
        from service.outputs.segment import segment_file
        from service.rasters import RGBRaster
        from service.store.repository import ModelStore
        from service.tiling.engine import EngineConfig, TilingEngine

        entry = ModelStore(Path(store)).get(name)
        backend = open_engine(entry, backend_kind, device="cpu")
        engine = TilingEngine(backend, EngineConfig())
        with RGBRaster(image) as src:
            plan = engine.plan(src.height, src.width)
        times = []
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(2):  # the first compiles the window shape; a serving process is warm
                # End to end as `footprints segment` runs it: GeoTIFF in, mask GeoTIFF out.
                t0 = time.perf_counter()
                segment_file(engine, image, Path(tmp) / "mask.tif", progress=False)
                times.append(time.perf_counter() - t0)
            with rasterio.open(Path(tmp) / "mask.tif") as m:
                mask = m.read(1) > 0
        q.put(
            {
                "seconds": times[-1],
                "cold_seconds": times[0],
                "mask": mask,
                "windows": len(plan.windows),
                "window": plan.window,
                "engine": f"{backend.engine}-{backend.precision}",
                "peak_rss_mb": _report.peak_rss_mb(),
            }
        )
    except Exception as e:
        q.put({"error": f"{type(e).__name__}: {e}"})


def _grpc_tile(store: Path, name: str, image: Path) -> dict[str, Any]:
    import rasterio

    from service.client import FootprintsClient

    proc, address = _report.serve(store, "--models", name)
    try:
        times = []
        with tempfile.TemporaryDirectory() as tmp, FootprintsClient(address) as client:
            for _ in range(2):  # as in-process: the second tile, on a warm server
                t0 = time.perf_counter()
                result = client.segment_file(image, Path(tmp) / "mask.tif", model=name, progress=False)
                times.append(time.perf_counter() - t0)
            with rasterio.open(Path(tmp) / "mask.tif") as m:
                mask = m.read(1) > 0
        hwm = _report.peak_rss_mb(proc.pid)
        s = result.summary
        return {
            "seconds": times[-1],
            "cold_seconds": times[0],
            "mask": mask,
            "windows": s.windows,
            "window": s.window,
            "engine": f"{s.backend}-{s.precision}",
            "peak_rss_mb": hwm,
        }
    finally:
        proc.terminate()
        proc.wait(60)


def tile_rows(store: Path, names: list[str], image: Path, rates: dict[str, float]) -> list[dict]:
    from service.store.repository import ModelStore

    rows = []
    for name in names:
        entry = ModelStore(store).get(name)
        reference = _in_child(_tile_job, str(store), name, str(image), "torch")
        local = _in_child(_tile_job, str(store), name, str(image), "auto")
        remote = _grpc_tile(store, name, image)
        passes = 8 if entry.geometry.tta else 1
        floor = 0.0
        for where, r in (("torch eager fp32 (reference)", reference), ("in-process", local), ("gRPC", remote)):
            macs = window_macs(entry, r["window"]) * r["windows"] * passes  # what this path's plan computes
            floor = 2 * macs / (rates["bf16"] * 1e9)
            rows.append(
                {
                    "model": f"{name} v{entry.version}",
                    "path": where,
                    "engine": r["engine"],
                    "windows": f"{r['windows']} x {r['window']}",
                    "tile_tmac": macs / 1e12,
                    "seconds": r["seconds"],
                    "cold_seconds": r["cold_seconds"],
                    "bf16_floor_s": floor,
                    "x_bf16_floor": r["seconds"] / floor,
                    "mask_agreement": float(np.mean(r["mask"] == reference["mask"])),
                    "peak_rss_mb": r["peak_rss_mb"],
                }
            )
        rows[-1]["grpc_over_in_process"] = remote["seconds"] / local["seconds"]
        print(
            f"{name}: tile {local['seconds']:.2f} s in-process, {remote['seconds']:.2f} s gRPC, floor {floor:.2f} s", flush=True
        )
    return rows


def chart(windows: list[dict], tiles: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [3, 1]})
    ok = [r for r in windows if "x_floor" in r]
    labels = sorted({f"{r['model']}\n{r['side']} px" for r in ok}, key=lambda s: (s.split("\n")[0], int(s.split("\n")[1][:-3])))
    width = 0.8 / len(ENGINES)
    for k, engine in enumerate(ENGINES):
        ys = [
            next((r["x_bf16_floor"] for r in ok if f"{r['model']}\n{r['side']} px" == lab and r["engine"] == engine), 0)
            for lab in labels
        ]
        a.bar(np.arange(len(labels)) + k * width, ys, width, label=engine)
    a.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, fontsize=7)
    a.set_yscale("log")
    a.axhline(1.0, color="k", lw=0.8)
    a.set_ylabel("seconds / bf16 compute floor (log)")
    a.set_title("one window per engine")
    a.legend(fontsize=8)
    tile = [r for r in tiles if r["path"] in ("in-process", "gRPC")]
    a_labels = [f"{r['model']}\n{r['path']}" for r in tile]
    b.bar(
        range(len(tile)), [r["seconds"] for r in tile], color=["tab:blue" if r["path"] == "gRPC" else "tab:orange" for r in tile]
    )
    b.bar(range(len(tile)), [r["bf16_floor_s"] for r in tile], color="none", edgecolor="k", hatch="//", label="bf16 floor")
    b.set_xticks(range(len(tile)), a_labels, fontsize=7)
    b.set_ylabel("seconds per 5000 x 5000 tile")
    b.set_title("one tile, --backend auto")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    _report.with_startup_env()
    from service.store.repository import ModelStore

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", type=Path, default=_report.ROOT / "model_store")
    ap.add_argument("--models", help="comma-separated (default: every model in the store; '' for none)")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--tile-models", help="comma-separated (default: the store's default model and nus)")
    ap.add_argument("--size", type=int, default=5000, help="tile side for the tile runs")
    ap.add_argument("--out", type=Path, default=_report.RESULTS / "engines.json")
    ap.add_argument("--gemm-size", type=int, default=4096, help="side of the n^3 MatMul that measures the floor")
    args = ap.parse_args()
    store = ModelStore(args.store)
    names = [n for n in args.models.split(",") if n] if args.models is not None else store.names()
    tile_names = args.tile_models.split(",") if args.tile_models is not None else [store.default_name(), "nus"]
    tile_names = [n for n in tile_names if n]

    from training.synthetic import style, synthesize_tile

    rates = gemm_rates(args.gemm_size)
    print("GEMM rate: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="footprints-engines-") as tmp:
        image = synthesize_tile(Path(tmp), style("fairhaven"), 1, args.size, 1, seed=3).image
        windows = window_rows(args.store, names, args.engines.split(","), image, rates)
        tiles = tile_rows(args.store, tile_names, image, rates) if tile_names else []
    from service.machine import this_cpu

    extra = {"gemm_gflops": rates, "cpu": this_cpu().key, "tile_px": args.size, "tiles": tiles}
    _report.write("engines", windows or [{"model": "(no window runs)"}], extra, out=args.out)
    if tiles:
        print()
        _report.print_table(tiles)
    chart(windows, tiles, args.out.with_suffix(".png"))
    print(f"chart: {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
