"""How long ``footprints synth`` takes for one tile pair, and its peak memory.

Each tile is made in a fresh child process so its peak RSS is its own. Usage:
    .venv/bin/python benchmarks/synth.py [--size 5000] [--cities brookline,ashford,cedarvale]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402


def _one(city: str, size: int, out: str, q: mp.Queue) -> None:
    from training.synthetic import style, synthesize_tile

    t = time.perf_counter()
    r = synthesize_tile(Path(out), style(city), 1, size, 1, seed=0)
    q.put(
        {
            "city": city,
            "size_px": size,
            "seconds": time.perf_counter() - t,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "buildings": r.buildings,
            "image_mb": r.image.stat().st_size / 2**20,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--cities", default="brookline,ashford,cedarvale,harbourside")
    args = ap.parse_args()
    rows = []
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as out:
        for city in args.cities.split(","):
            q = ctx.Queue()
            p = ctx.Process(target=_one, args=(city, args.size, out, q))
            p.start()
            rows.append(q.get())
            p.join()
    # A 5000^2 RGB image is 75 MB as uint8; peak RSS says how many copies were held.
    _report.write("synth", rows, {"budget_seconds": 20, "rgb_tile_mb": 3 * args.size**2 / 2**20})


if __name__ == "__main__":
    main()
