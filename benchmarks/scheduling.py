"""Oldest tile first against first come, first served: the same server, model and tiles,
``footprints loadtest`` under each ``--window-order``, side by side in one run:
- closed loop at 1, 2, 4 and 8 clients: throughput should match. Its mean latency cannot
  move at equal throughput (Little's law: clients / tiles per second), whatever the order;
- a burst: 8 tiles sent at once. First come, first served ends them all together; oldest
  first ends them one after another, so their mean latency falls by about half;
- open loop (``--rate``): Poisson arrivals with the same seed for both orders.

    .venv/bin/python benchmarks/scheduling.py [--duration 60] [--size 2500] [--max-batch 1]

Writes benchmarks/results/scheduling.json and scheduling.png and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

ORDERS = ("arrival", "oldest-tile")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loadtest(address: str, port: int, tiles: Path, out: Path, *step: str) -> list[dict]:
    subprocess.run(
        [str(Path(sys.executable).with_name("footprints")), "loadtest", "--server", address,
         "--metrics", f"http://127.0.0.1:{port}/metrics", "--tiles", str(tiles), *step, "--out", str(out)],
        check=True,
    )  # fmt: skip
    return json.loads((out / "report.json").read_text())["steps"]


def _run(store: Path, order: str, args: argparse.Namespace, tiles: Path) -> dict[str, list[dict]]:
    port = _free_port()
    proc, address = _report.serve(store, "--max-tiles", "8", "--max-tiles-per-client", "8", "--metrics-port", str(port),
                                  "--window-order", order, "--tune", "off",
                                  "--max-batch", str(args.max_batch))  # fmt: skip
    out = _report.RESULTS / f"scheduling-{order}"
    try:
        steps = {"closed": _loadtest(address, port, tiles, out, "--concurrency", args.concurrency, "--duration",
                                     str(args.duration), *(["--rate", str(args.rate)] if args.rate else []))}  # fmt: skip
        steps["burst"] = _loadtest(address, port, tiles, out.with_name(out.name + "-burst"), "--concurrency", "8",
                                   "--count", "8", "--warmup", "1")  # fmt: skip
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", type=Path, default=_report.ROOT / "model_store")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per step")
    ap.add_argument("--size", type=int, default=2500, help="side of the synthetic tiles")
    ap.add_argument("--concurrency", default="1,2,4,8")
    # A tile of one batch has nothing to reorder: keep batches small enough that each
    # tile needs several, as a 5000^2 tile does at the default --max-batch.
    ap.add_argument("--max-batch", type=int, default=1, help="the server's --max-batch")
    ap.add_argument("--rate", type=float, help="also an open-loop step at this many tiles per second")
    args = ap.parse_args()
    sys.path.insert(0, str(_report.ROOT))
    from loadtest.tiles import synthetic

    tiles = _report.RESULTS / "scheduling-tiles"
    synthetic(tiles, 4, args.size)
    steps = {order: _run(args.store, order, args, tiles) for order in ORDERS}
    rows = []
    for kind in ("closed", "burst"):
        for before, after in zip(steps["arrival"][kind], steps["oldest-tile"][kind]):
            label = "burst of 8" if kind == "burst" else before["step"]
            rows.append(
                {
                    "step": label,
                    "clients": int(before["step"][2:]) if kind == "closed" and before["step"].startswith("c=") else None,
                    "arrival": {k: before[k] for k in ("tiles_per_s", "latency_s", "ok")},
                    "oldest_tile": {k: after[k] for k in ("tiles_per_s", "latency_s", "ok")},
                }
            )
    result = {
        "machine": _report.machine(),
        "tile_px": args.size,
        "max_batch": args.max_batch,
        "duration_s": args.duration,
        "rows": rows,
    }
    (_report.RESULTS / "scheduling.json").write_text(json.dumps(result, indent=1))
    print(
        f"{'step':>12} | {'tiles/s before':>14} {'after':>7} | {'mean s before':>13} {'after':>7} | {'p99 s before':>12} {'after':>7}"
    )
    for r in rows:
        a, b = r["arrival"], r["oldest_tile"]
        print(
            f"{r['step']:>12} | {a['tiles_per_s']:>14.3f} {b['tiles_per_s']:>7.3f} | {a['latency_s']['mean']:>13.2f} "
            f"{b['latency_s']['mean']:>7.2f} | {a['latency_s']['p99']:>12.2f} {b['latency_s']['p99']:>7.2f}"
        )
    _chart([r for r in rows if r["clients"]], _report.RESULTS / "scheduling.png")


def _chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = [r["clients"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, style in (("arrival", "first come, first served", "o--"), ("oldest_tile", "oldest tile first", "s-")):
        a.plot(clients, [r[key]["latency_s"]["mean"] for r in rows], style, label=f"{label}: mean")
        a.plot(clients, [r[key]["latency_s"]["p99"] for r in rows], style, alpha=0.4, label=f"{label}: p99")
        b.plot(clients, [r[key]["tiles_per_s"] for r in rows], style, label=label)
    a.set(xlabel="concurrent clients", ylabel="tile latency, s", title="latency", ylim=(0, None))
    b.set(xlabel="concurrent clients", ylabel="tiles / s", title="throughput", ylim=(0, None))
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
