"""The service's overheads, measured side by side in one run on this machine.

1. One tile (5000 x 5000 by default) end to end through gRPC (a ``footprints serve``
   process on 127.0.0.1, ONNX Runtime) vs the in-process tiling engine with the same
   backend: the ratio should be at most 1.05.
2. ONNX Runtime vs PyTorch on one model window (median of 3 runs each).
3. Throughput with 1, 2 and 4 concurrent clients, each sending ``--tiles`` tiles.

Writes benchmarks/results/service.json and prints a table.

    .venv/bin/python benchmarks/serving.py [--model amll] [--size 5000] [--throughput-size 2500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402


def main() -> None:
    _report.with_startup_env()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", type=Path, default=_report.ROOT / "model_store")
    ap.add_argument("--model", default="amll")
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--throughput-size", type=int, default=2500)
    ap.add_argument("--tiles", type=int, default=2, help="tiles per client in the throughput runs")
    args = ap.parse_args()

    from service.client import FootprintsClient
    from service.engines import open_engine
    from service.engines.timings import median_seconds
    from service.outputs.segment import SegmentOptions, segment_file
    from service.store.repository import ModelStore
    from service.tiling.engine import EngineConfig, TilingEngine
    from training.synthetic import style, synthesize_tile

    entry = ModelStore(args.store).get(args.model)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big = synthesize_tile(tmp / "big", style("fairhaven"), 1, args.size, 1, seed=11).image
        small = synthesize_tile(tmp / "small", style("harbourside"), 1, args.throughput_size, 1, seed=12).image
        # ONNX Runtime on both sides, as this benchmark states (serve's default is now auto).
        proc, address = _report.serve(args.store, "--max-tiles", "8", "--max-tiles-per-client", "8", "--backend", "onnxruntime")
        try:
            # 1. gRPC end to end vs in-process, same backend, same machine, back to back.
            engine = TilingEngine(open_engine(entry, "onnxruntime"), EngineConfig())
            t = time.perf_counter()
            segment_file(engine, big, tmp / "inproc.tif", SegmentOptions(), progress=False)
            inproc = time.perf_counter() - t
            with FootprintsClient(address) as client:
                t = time.perf_counter()
                result = client.segment_file(big, tmp / "grpc.tif", model=args.model, progress=False)
                grpc_s = time.perf_counter() - t
            import rasterio

            with rasterio.open(tmp / "inproc.tif") as a, rasterio.open(tmp / "grpc.tif") as b:
                identical = bool(np.array_equal(a.read(1), b.read(1)))
            rows.append({"measure": f"{args.size}^2 tile, in-process engine (s)", "value": inproc})
            rows.append({"measure": f"{args.size}^2 tile, through gRPC (s)", "value": grpc_s})
            rows.append({"measure": "gRPC / in-process (target <= 1.05)", "value": grpc_s / inproc})
            rows.append({"measure": "masks identical", "value": str(identical)})
            rows.append({"measure": "first mask rows after (s)", "value": result.first_rows_at})

            # 2. One window: ONNX Runtime vs PyTorch.
            window = result.summary.window
            crops = [np.random.default_rng(0).integers(0, 256, (1, 3, window, window), dtype=np.uint8)]
            per = {}
            for kind in ("onnxruntime", "torch"):
                backend = open_engine(entry, kind, "cpu")
                per[kind] = median_seconds(partial(backend.infer, crops), repeats=3)
                rows.append({"measure": f"one {window}-px window, {kind} (s)", "value": per[kind]})
            rows.append({"measure": "ONNX Runtime / PyTorch per window", "value": per["onnxruntime"] / per["torch"]})

            # 3. Throughput with concurrent clients.
            mpx = args.throughput_size**2 / 1e6
            for clients in (1, 2, 4):

                def work(i: int, clients: int) -> None:
                    with FootprintsClient(address) as c:
                        for k in range(args.tiles):
                            c.segment_file(small, tmp / f"t{clients}-{i}-{k}.tif", model=args.model, progress=False)

                threads = [threading.Thread(target=work, args=(i, clients)) for i in range(clients)]
                t = time.perf_counter()
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                wall = time.perf_counter() - t
                n = clients * args.tiles
                rows.append(
                    {"measure": f"{clients} client(s): {n} tiles of {args.throughput_size}^2, Mpx/s", "value": n * mpx / wall}
                )
        finally:
            proc.terminate()
            proc.wait(60)
    _report.write("service", rows, {"model": f"{entry.name}/{entry.version}", "network_args": dict(entry.manifest.network_args)})


if __name__ == "__main__":
    main()
