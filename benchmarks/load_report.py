"""The load test's report for the default model on this machine, as the README quotes it.

Starts ``footprints serve`` (the store's default model, engine ``auto``, metrics on),
runs ``footprints loadtest`` in closed loop at 1, 2, 4 and 8 clients and in open loop,
then (``--soak SECONDS``) a soak at the saturation point it found. Reports land in
benchmarks/results/loadtest/ and benchmarks/results/loadtest-soak/.

    .venv/bin/python benchmarks/load_report.py [--duration 90] [--soak 1800]

The server takes up to 8 tiles at once (``--max-tiles 8``) so that 8 clients measure
queueing, not RESOURCE_EXHAUSTED answers.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", type=Path, default=_report.ROOT / "model_store")
    ap.add_argument("--duration", type=float, default=90.0, help="seconds per closed-loop step")
    ap.add_argument("--rate", type=float, default=0.3, help="open loop: tiles per second")
    ap.add_argument("--soak", type=float, default=0.0, help="soak seconds at saturation (0: none)")
    ap.add_argument("--size", type=int, default=5000)
    args = ap.parse_args()

    metrics_port = _free_port()
    proc, address = _report.serve(
        args.store, "--max-tiles", "8", "--max-tiles-per-client", "8", "--metrics-port", str(metrics_port)
    )
    footprints = str(Path(sys.executable).with_name("footprints"))
    common = [
        footprints,
        "loadtest",
        "--server",
        address,
        "--metrics",
        f"http://127.0.0.1:{metrics_port}/metrics",
        "--size",
        str(args.size),
    ]
    out = _report.RESULTS / "loadtest"
    try:
        subprocess.run(
            [*common, "--concurrency", "1,2,4,8", "--rate", str(args.rate), "--duration", str(args.duration), "--out", str(out)],
            check=True,
        )
        if args.soak:
            subprocess.run(
                [*common, "--soak", "--saturation-from", str(out / "report.json"), "--duration", str(args.soak), "--warmup", "0",
                 "--out", str(_report.RESULTS / "loadtest-soak")],
                check=True,
            )  # fmt: skip
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


if __name__ == "__main__":
    main()
