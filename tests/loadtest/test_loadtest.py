"""``footprints loadtest`` against a real server on 127.0.0.1: what it reports matches
what the server counted, errors are reported by code, and the report is written."""

from __future__ import annotations

import json
import re

from service.api.servicer import Limits

from ..conftest import run_cli
from ..service.servers import RunningServer, config, scrape


def _ok_tiles(metrics_url: str) -> float:
    return scrape(metrics_url).get('footprints_requests_total{code="OK",method="SegmentTile"}', 0)


def test_closed_and_open_loop_report_what_the_server_served(store, tmp_path):
    s = RunningServer(config(store))
    try:
        out = tmp_path / "report"
        args = ["--server", s.address, "--metrics", s.metrics_url, "--synthetic", "2", "--size", "300", "--model", "amll"]
        done = run_cli("loadtest", *args, "--concurrency", "1,2", "--rate", "4", "--duration", "2", "--warmup", "1",
                       "--scrape-every", "0.2", "--out", str(out))  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads((out / "report.json").read_text())
        steps = {st["step"]: st for st in report["steps"]}
        assert list(steps) == ["c=1", "c=2", "rate=4/s"]
        for st in steps.values():
            assert st["ok"] > 0 and st["errors"] == {} and st["tiles_per_s"] > 0
            assert 0 < st["latency_s"]["p50"] <= st["latency_s"]["p99"] <= st["latency_s"]["max"]
            assert abs(st["mpx_per_s"] / st["tiles_per_s"] - 0.09) < 1e-9  # 300 x 300 px tiles
        # Every tile the load test saw answered, the server counted as served (and the warm-up).
        assert sum(st["ok"] for st in steps.values()) + 1 == _ok_tiles(s.metrics_url)
        assert report["saturation"]["concurrency"] in (1, 2)
        assert report["samples"] and all(x["rss_bytes"] > 0 for x in report["samples"])
        page = (out / "report.html").read_text()
        for png in re.findall(r"src='([^']+\.png)'", page):
            assert (out / png).stat().st_size > 10_000
        assert "throughput_vs_concurrency.png" in page and "saturation" in done.stdout
    finally:
        s.stop()


def test_errors_are_reported_by_status_code_and_soak_reports_its_count(store, tmp_path):
    s = RunningServer(config(store, limits=Limits(max_tiles_in_flight=1, max_raster_side=6000)))
    try:
        out = tmp_path / "soak"
        done = run_cli("loadtest", "--server", s.address, "--metrics", s.metrics_url, "--synthetic", "1", "--size", "600",
                       "--model", "amll", "--soak", "--concurrency", "3", "--duration", "3", "--warmup", "0", "--out", str(out))  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads((out / "report.json").read_text())
        (step,) = report["steps"]
        # Three clients, one tile slot: the others were refused, and said so.
        assert step["step"] == "soak" and step["ok"] > 0 and step["errors"]["RESOURCE_EXHAUSTED"] > 0
        assert report["soak"]["errors"] == step["errors"]["RESOURCE_EXHAUSTED"]
        assert report["soak"]["rss"] is None  # 3 s: too short for a trend, and said so
        assert "soak:" in done.stdout and "too short" in done.stdout
        assert step["ok"] == _ok_tiles(s.metrics_url)
    finally:
        s.stop()
