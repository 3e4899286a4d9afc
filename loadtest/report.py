"""A load test's results: per-step figures, the saturation point, the soak's memory
trend; written as JSON, PNG charts and one HTML page that shows them."""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

import numpy as np

from .calls import Call
from .scrape import Sample

SATURATED = 0.95  # the smallest concurrency reaching this share of the best throughput


def step_summary(step: str, calls: list[Call], samples: list[Sample]) -> dict:
    """Throughput and latency of one step; the server's samples taken while it ran."""
    ok = [c for c in calls if c.code == "OK"]
    begin = min(c.start for c in calls)
    end = max(c.start + c.latency - c.late for c in calls)
    wall = max(end - begin, 1e-9)
    lat = np.array([c.latency for c in ok]) if ok else np.array([np.nan])
    first = np.array([c.first_row for c in ok if c.first_row is not None] or [np.nan])
    during = [s for s in samples if begin <= s.at <= end]
    batches = [s.batch_size for s in during if s.batch_size is not None]
    return {
        "step": step,
        "calls": len(calls),
        "ok": len(ok),
        "errors": dict(Counter(c.code for c in calls if c.code != "OK")),
        "seconds": wall,
        "tiles_per_s": len(ok) / wall,
        "mpx_per_s": sum(c.pixels for c in ok) / wall / 1e6,
        "windows_per_s": sum(c.windows for c in ok) / wall,
        "latency_s": {q: float(np.percentile(lat, p)) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))}
        | {"max": float(lat.max()), "mean": float(lat.mean())},
        "first_row_s": {"p50": float(np.percentile(first, 50)), "p99": float(np.percentile(first, 99))},
        "server": {
            "queued_windows_mean": float(np.mean([s.queued_windows for s in during])) if during else None,
            "tiles_in_flight_mean": float(np.mean([s.tiles_in_flight for s in during])) if during else None,
            "batch_size_mean": float(np.mean(batches)) if batches else None,
            "rss_mb_max": max(s.rss_bytes for s in during) / 2**20 if during else None,
        },
    }


def saturation(steps: list[dict]) -> dict | None:
    """The closed-loop step where throughput stops growing: the smallest concurrency
    within 5 % of the best tiles/s (more clients past it only add queueing)."""
    closed = [s for s in steps if s["step"].startswith("c=")]
    if not closed:
        return None
    best = max(s["tiles_per_s"] for s in closed)
    at = min((s for s in closed if s["tiles_per_s"] >= SATURATED * best), key=lambda s: int(s["step"][2:]))
    return {"concurrency": int(at["step"][2:]), "tiles_per_s": at["tiles_per_s"], "p99_s": at["latency_s"]["p99"]}


def rss_trend(samples: list[Sample], window_s: float = 300.0) -> dict | None:
    """Mean server RSS over the first and the last ``window_s`` seconds of the samples,
    and their ratio (a flat server: within 5 %)."""
    if len(samples) < 2 or samples[-1].at - samples[0].at < 2 * window_s:
        return None
    a = [s.rss_bytes for s in samples if s.at <= samples[0].at + window_s]
    b = [s.rss_bytes for s in samples if s.at >= samples[-1].at - window_s]
    first, last = float(np.mean(a)) / 2**20, float(np.mean(b)) / 2**20
    return {
        "window_s": window_s,
        "first_mb": first,
        "last_mb": last,
        "change": last / first - 1,
        "flat": abs(last / first - 1) <= 0.05,
    }


def write(out: Path, meta: dict, calls: list[Call], samples: list[Sample], steps: list[dict], soak: dict | None) -> Path:
    """``report.json``, the PNG charts and ``report.html`` in ``out``; returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "meta": meta,
        "steps": steps,
        "saturation": saturation(steps),
        "soak": soak,
        "calls": [c.to_dict() for c in calls],
        "samples": [s.to_dict() for s in samples],
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    charts = _charts(out, calls, samples, steps)
    page = out / "report.html"
    page.write_text(_html(report, charts))
    return page


def table(steps: list[dict]) -> str:
    """The steps as a text table (printed at the end of a run)."""
    head = f"{'step':>12} {'ok':>5} {'errors':>18} {'tiles/s':>8} {'Mpx/s':>7} {'p50 s':>7} {'p90 s':>7} {'p99 s':>7} {'max s':>7} {'1st row p50':>11} {'batch':>5} {'RSS MB':>7}"
    lines = [head]
    for s in steps:
        errors = ",".join(f"{k}:{v}" for k, v in s["errors"].items()) or "0"
        srv = s["server"]
        lines.append(
            f"{s['step']:>12} {s['ok']:>5} {errors:>18} {s['tiles_per_s']:>8.3f} {s['mpx_per_s']:>7.2f} "
            f"{s['latency_s']['p50']:>7.2f} {s['latency_s']['p90']:>7.2f} {s['latency_s']['p99']:>7.2f} {s['latency_s']['max']:>7.2f} "
            f"{s['first_row_s']['p50']:>11.2f} {_fmt(srv['batch_size_mean'], 5, 2)} {_fmt(srv['rss_mb_max'], 7, 0)}"
        )
    return "\n".join(lines)


def _fmt(v: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"


def _charts(out: Path, calls: list[Call], samples: list[Sample], steps: list[dict]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts: list[tuple[str, str]] = []
    # Latency over time, one colour per step, errors as crosses; the server's RSS below.
    fig, (ax, mem) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for i, step in enumerate(dict.fromkeys(c.step for c in calls)):
        mine = [c for c in calls if c.step == step]
        ok = [c for c in mine if c.code == "OK"]
        bad = [c for c in mine if c.code != "OK"]
        ax.scatter([c.start for c in ok], [c.latency for c in ok], s=9, color=f"C{i}", label=step)
        if bad:
            ax.scatter([c.start for c in bad], [c.latency for c in bad], s=30, marker="x", color="red")
    ax.set_ylabel("tile latency (s)")
    ax.legend(fontsize=8, ncol=4)
    ax.grid(alpha=0.3)
    if samples:
        mem.plot([s.at for s in samples], [s.rss_bytes / 2**20 for s in samples], color="k", lw=1)
    mem.set_ylabel("server RSS (MB)")
    mem.set_xlabel("seconds since start")
    mem.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "latency_over_time.png", dpi=110)
    plt.close(fig)
    charts.append(
        ("latency_over_time.png", "Latency of every tile over the run (red crosses: errors), and the server's resident memory")
    )

    closed = [s for s in steps if s["step"].startswith("c=")]
    if closed:
        conc = [int(s["step"][2:]) for s in closed]
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.plot(conc, [s["tiles_per_s"] for s in closed], "o-", color="C0", label="tiles/s")
        ax.set_ylim(0, 1.2 * max(s["tiles_per_s"] for s in closed))  # from zero: a 5 % wiggle looks like one
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("tiles/s", color="C0")
        ax.set_xscale("log", base=2)
        ax.set_xticks(conc, [str(c) for c in conc])
        right = ax.twinx()
        right.plot(conc, [s["latency_s"]["p99"] for s in closed], "s--", color="C3", label="p99")
        right.plot(conc, [s["latency_s"]["p50"] for s in closed], "^:", color="C1", label="p50")
        right.set_ylabel("latency (s)", color="C3")
        sat = saturation(steps)
        if sat:
            ax.axvline(sat["concurrency"], color="grey", lw=1, ls=":")
            ax.annotate(
                "saturation", (sat["concurrency"], sat["tiles_per_s"]), textcoords="offset points", xytext=(5, -15), fontsize=8
            )
        right.set_ylim(0, None)
        lines = ax.get_lines()[:1] + right.get_lines()
        ax.legend(lines, [str(line.get_label()) for line in lines], loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "throughput_vs_concurrency.png", dpi=110)
        plt.close(fig)
        charts.append(("throughput_vs_concurrency.png", "Throughput and latency against concurrency: where it saturates"))
    return charts


def _html(report: dict, charts: list[tuple[str, str]]) -> str:
    meta = report["meta"]
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in _row(s)) + "</tr>" for s in report["steps"])
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "step",
            "ok",
            "errors",
            "tiles/s",
            "Mpx/s",
            "p50 s",
            "p90 s",
            "p99 s",
            "max s",
            "first row p50 s",
            "mean batch",
            "server RSS MB",
        )
    )
    sat = report["saturation"]
    soak = report["soak"]
    parts = [
        "<!doctype html><meta charset='utf-8'><title>footprints load test</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}td,th{padding:2px 8px;text-align:right}table{border-collapse:collapse}tr:nth-child(even){background:#f3f3f3}</style>",
        "<h1>footprints load test</h1>",
        f"<p>{html.escape(json.dumps(meta))}</p>",
        f"<table><tr>{head}</tr>{rows}</table>",
    ]
    if sat:
        parts.append(
            f"<p><b>Saturation</b>: {sat['concurrency']} clients, {sat['tiles_per_s']:.3f} tiles/s, p99 {sat['p99_s']:.2f} s.</p>"
        )
    if soak:
        parts.append(f"<p><b>Soak</b>: {html.escape(json.dumps(soak))}</p>")
    parts += [
        f"<figure><img src='{name}' alt='{html.escape(text)}'><figcaption>{html.escape(text)}</figcaption></figure>"
        for name, text in charts
    ]
    return "\n".join(parts)


def _row(s: dict) -> list:
    srv = s["server"]
    return [
        s["step"], s["ok"], ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "0", f"{s['tiles_per_s']:.3f}", f"{s['mpx_per_s']:.2f}",
        *(f"{s['latency_s'][q]:.2f}" for q in ("p50", "p90", "p99", "max")), f"{s['first_row_s']['p50']:.2f}",
        "-" if srv["batch_size_mean"] is None else f"{srv['batch_size_mean']:.2f}", "-" if srv["rss_mb_max"] is None else f"{srv['rss_mb_max']:.0f}",
    ]  # fmt: skip


def redraw(out: Path) -> Path:
    """Charts and page again from ``out/report.json`` (after a change to the charts)."""
    from .calls import Call
    from .scrape import Sample

    report = json.loads((out / "report.json").read_text())
    calls = [Call(**c) for c in report["calls"]]
    samples = [Sample(**x) for x in report["samples"]]
    return write(out, report["meta"], calls, samples, report["steps"], report["soak"])


if __name__ == "__main__":
    import sys

    for folder in sys.argv[1:]:
        print(redraw(Path(folder)))
