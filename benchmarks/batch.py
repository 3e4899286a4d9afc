"""City scale on this machine: tiles per hour of ``footprints batch`` (embedded Ray)
with 1 and 2 workers against ``footprints segment`` run tile after tile in a shell
loop, all on the same 5000 x 5000 tiles, the store's default model, engine auto, in
one run. Writes benchmarks/results/batch.json and prints a table.

    .venv/bin/python benchmarks/batch.py [--tiles 8] [--size 5000]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402


def _timed(cmd: str, env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(["bash", "-c", cmd], check=True, env=env, cwd=_report.ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    _report.with_startup_env()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiles", type=int, default=8)
    ap.add_argument("--size", type=int, default=5000)
    args = ap.parse_args()

    from loadtest.tiles import synthetic

    exe = shlex.quote(str(Path(sys.executable).with_name("footprints")))
    env = dict(os.environ)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiles"
        synthetic(folder, args.tiles, args.size, seed=7)
        n = args.tiles
        loop = f'for f in {folder}/*.tif; do {exe} segment "$f" -o {tmp}/loop/$(basename "$f"); done'
        runs = {
            "footprints segment, shell loop": loop,
            "footprints batch, 1 worker": f"{exe} batch --input {folder} --out {tmp}/b1 --workers 1",
            "footprints batch, 2 workers": f"{exe} batch --input {folder} --out {tmp}/b2 --workers 2",
        }
        seconds = {label: _timed(cmd, env) for label, cmd in runs.items()}
        base = seconds["footprints segment, shell loop"]
        for label, s in seconds.items():
            rows.append({"run": label, "tiles": n, "seconds": s, "tiles_per_hour": n / s * 3600, "vs_shell_loop": base / s})
    _report.write(
        "batch",
        rows,
        {
            "tile_px": args.size,
            "note": "engine auto (the store's default model); Ray embedded, workers pinned to their own cores",
        },
    )


if __name__ == "__main__":
    main()
