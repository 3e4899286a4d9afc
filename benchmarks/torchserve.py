"""Our serving stack against TorchServe, same model and tiles, one run.

Every setup is reached the same way: through our gRPC front end (``footprints serve``)
on 127.0.0.1, which cuts and stitches the tiles; what differs is where the windows run:

- ``in-process (auto)``: in the front end, the engine ``--backend auto`` picks here;
- ``in-process (torch)``: in the front end, PyTorch eager on the exported program (the
  engine TorchServe runs, so the ratio to TorchServe is the serving stack alone);
- ``our model server (torch)``: a second ``footprints serve`` (PyTorch), over gRPC;
- ``TorchServe (torch)``: a real TorchServe with our archive, over its REST API.

Per setup: one 5000 x 5000 tile (seconds, Mpx/s), then 2500 x 2500 tiles with 1, 2 and
4 concurrent clients (Mpx/s, p50/p99 tile latency), and the peak memory of the
front end's and the model tier's process trees. JSON + table + PNG.

    .venv/bin/python benchmarks/torchserve.py [--model effnet] [--size 5000] [--tiles 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402


def _tree_peak_mb(pgid: int) -> float:
    """Sum of peak RSS over a process group: a server and what it spawned."""
    from service.torchserve.runner import group_processes

    return sum(_report.peak_rss_mb(pid) for pid in group_processes(pgid))


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(120)


def _measure(address: str, model: str, big: Path, small: Path, tiles: int, tmp: Path) -> dict:
    from service.client import FootprintsClient

    out: dict = {}
    with FootprintsClient(address) as client:
        client.segment_file(small, tmp / "warm.tif", model=model, progress=False)  # shapes compiled, workers warm
        t0 = time.perf_counter()
        client.segment_file(big, tmp / "big.tif", model=model, progress=False)
        out["tile_s"] = time.perf_counter() - t0
    latencies: list[float] = []
    for clients in (1, 2, 4):

        def work(i: int, clients: int) -> None:
            with FootprintsClient(address) as c:
                for k in range(tiles):
                    t = time.perf_counter()
                    c.segment_file(small, tmp / f"s{clients}-{i}-{k}.tif", model=model, progress=False)
                    latencies.append(time.perf_counter() - t)

        threads = [threading.Thread(target=work, args=(i, clients)) for i in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out[f"mpx_s_{clients}"] = clients * tiles * _side(small) ** 2 / 1e6 / (time.perf_counter() - t0)
    out["p50_s"], out["p99_s"] = float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))
    return out


def _side(image: Path) -> int:
    import rasterio

    with rasterio.open(image) as src:
        return int(src.width)


def main() -> None:
    _report.with_startup_env()
    from service.store.repository import ModelStore
    from service.torchserve.archive import archive_name, build_archive
    from service.torchserve.runner import TorchServe, TorchServeConfig
    from training.synthetic import style, synthesize_tile

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", type=Path, default=_report.ROOT / "model_store")
    ap.add_argument("--model", help="default: the store's default model")
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--throughput-size", type=int, default=2500)
    ap.add_argument("--tiles", type=int, default=2, help="tiles per client in the concurrency runs")
    ap.add_argument("--out", type=Path, default=_report.RESULTS / "torchserve.json")
    args = ap.parse_args()
    model = args.model or ModelStore(args.store).default_name()
    entry = ModelStore(args.store).get(model)

    rows = []
    with tempfile.TemporaryDirectory(prefix="footprints-ts-bench-") as tmp_name:
        tmp = Path(tmp_name)
        big = synthesize_tile(tmp / "big", style("fairhaven"), 1, args.size, 1, seed=11).image
        small = synthesize_tile(tmp / "small", style("harbourside"), 1, args.throughput_size, 1, seed=12).image
        archives = tmp / "archives"
        build_archive(args.store, model, archives, batch_size=4, max_batch_delay_ms=5, workers=1)

        setups = [("in-process (auto)", ("--backend", "auto"), None), ("in-process (torch)", ("--backend", "torch"), None)]
        setups += [("our model server (torch)", (), "ours"), ("TorchServe (torch)", (), "torchserve")]
        for label, extra, tier in setups:
            tier_proc: subprocess.Popen | None = None
            ts: TorchServe | None = None
            if tier == "ours":
                tier_proc, tier_address = _report.serve(args.store, "--models", model, "--backend", "torch")
                extra = ("--model-servers", tier_address)
            elif tier == "torchserve":
                ts = TorchServe(TorchServeConfig(archives, log_dir=tmp / "ts-logs"))
                ts.wait_ready(1)
                extra = ("--model-servers", f"torchserve://{ts.address}")
            front, address = _report.serve(args.store, "--models", model, *extra)
            try:
                m = _measure(address, model, big, small, args.tiles, tmp)
                m["front_peak_mb"] = _tree_peak_mb(front.pid)
                if tier_proc is not None:
                    m["tier_peak_mb"] = _tree_peak_mb(tier_proc.pid)
                if ts is not None:
                    m["tier_peak_mb"] = _tree_peak_mb(ts.proc.pid)
            finally:
                _stop(front)
                if tier_proc is not None:
                    _stop(tier_proc)
                if ts is not None:
                    ts.stop()
            rows.append({"setup": label, **m, "tile_mpx_s": args.size**2 / 1e6 / m["tile_s"]})
            print(f"{label}: tile {m['tile_s']:.2f} s", flush=True)
    base = next(r for r in rows if r["setup"] == "TorchServe (torch)")
    for r in rows:
        r["tile_speedup_vs_torchserve"] = base["tile_s"] / r["tile_s"]
        r["mpx_s_4_vs_torchserve"] = r["mpx_s_4"] / base["mpx_s_4"]
    extra_info = {
        "model": f"{entry.name} v{entry.version}",
        "archive": archive_name(entry.name, entry.version),
        "tile_px": args.size,
    }
    _report.write("torchserve", rows, extra_info, out=args.out)
    chart(rows, args.out.with_suffix(".png"), extra_info["model"])


def chart(rows: list[dict], png: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [r["setup"].replace(" (", "\n(") for r in rows]
    a.bar(labels, [r["tile_s"] for r in rows], color="tab:blue")
    a.set_ylabel("seconds per 5000 x 5000 tile")
    a.set_title(f"{model}: one tile through our gRPC front end")
    width = 0.25
    for k, clients in enumerate((1, 2, 4)):
        b.bar(np.arange(len(rows)) + k * width, [r[f"mpx_s_{clients}"] for r in rows], width, label=f"{clients} client(s)")
    b.set_xticks(np.arange(len(rows)) + width, labels)
    b.set_ylabel("Mpx/s (2500 x 2500 tiles)")
    b.set_title("throughput with concurrent clients")
    b.legend()
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"chart: {png}")


if __name__ == "__main__":
    main()
