"""``footprints report``: every store model scored on the same tiles, held out, and costed."""

from __future__ import annotations

import json

import pytest
import torch

from training.data.sources import Root
from training.export import export
from training.metric import Counts
from training.networks.cost import window_cost
from training.networks.model import SegmentationModel, save_checkpoint
from training.objects import ObjectCounts
from training.report import ModelRow, build_report, choose_default, markdown, write_report

from ..conftest import run_cli


@pytest.fixture(scope="module")
def report_store(tmp_path_factory):
    """amll (trained on synthetic cities only), raisa (trained on kampala: it may not be
    scored there) and a second raisa version with a leave-one-area-out record for kampala."""
    root = tmp_path_factory.mktemp("report-store")
    torch.manual_seed(0)
    amll = SegmentationModel("amll_unet", {"filters": (4, 8, 16, 32, 64)}, [110.0, 112.0, 114.0])
    export(save_checkpoint(root.parent / "a.pt", amll, data={"train_tiles": ["ashford1"]}, train_minutes=90), root, "amll")
    raisa = SegmentationModel("stacked_unet", {"filters": (4, 8, 8, 16, 16)}, [110.0, 112.0, 114.0])
    for v in (1, 2):
        export(save_checkpoint(root.parent / "r.pt", raisa, data={"train_tiles": ["kampala1", "ashford1"]}), root, "raisa", v)
    cells = {"kampala": {"tp": 30, "fp": 10, "fn": 10, "tn": 50}, "overall": {"tp": 30, "fp": 10, "fn": 10, "tn": 50}}
    loao = {"held out": cells, "held out at 0.15 m": cells, "held out at 0.6 m": cells}
    (root / "raisa" / "2" / "loao.json").write_text(json.dumps(loao))
    return root


def test_the_report_scores_held_out_areas_only_and_counts_tta_in_the_cost(report_store, tiny_cities, real_oam, tmp_path):
    rows = build_report(report_store, ["amll", "raisa:1", "raisa:2"], tiny_cities, [Root(real_oam)], [], timing=False)
    amll, raisa1, raisa2 = rows
    assert [r.label for r in rows] == ["amll v1", "raisa v1", "raisa v2"]
    assert set(amll.synthetic) == {"fairhaven"} and amll.real_source == {a: "held out" for a in ("kampala", "nepal", "zanzibar")}
    # Raisa trained on kampala: v1 has no number there; v2's comes from its leave-one-area-out run.
    assert raisa1.real_source["kampala"] == "seen" and "kampala" not in raisa1.real
    assert raisa2.real_source["kampala"] == "loao" and raisa2.real["kampala"].iou == pytest.approx(0.6)
    assert amll.train_minutes == 90 and raisa1.train_minutes is None and raisa1.tta and not amll.tta
    # Eight dihedral passes and the overlap of windows are in the cost, above one plain pass.
    model = SegmentationModel("stacked_unet", {"filters": (4, 8, 8, 16, 16)}, [0.0] * 3)
    one_pass = window_cost(model, ((1, 3, 512, 512),))["macs"] / 512**2 / 1e3
    assert raisa1.kmac_per_px > 8 * one_pass and amll.kmac_per_px > 0

    # Buildings beside pixels: each area amll scored held out has its object counts, and the
    # table shows their pooled F1; raisa v2's loao file has none, so it shows none.
    assert amll.real_objects.keys() == amll.real.keys() and all(o.reference > 0 for o in amll.real_objects.values())
    f1 = 100 * sum(amll.real_objects.values(), ObjectCounts()).f1
    table = markdown(rows)
    assert f" | {f1:.2f} | " in next(line for line in table.splitlines() if line.startswith("| AMLL (Duke) | amll v1 |"))
    assert "| AMLL (Duke) | amll v1 |" in table and "| Raisa | raisa v1 |" in table
    assert "nepal + zanzibar (every model held out)" in table and "60.00 / 80.00*" in table
    # ... and their F1 on the areas every model held out, the column models are compared by.
    common_f1 = 100 * sum((amll.real_objects[a] for a in ("nepal", "zanzibar")), ObjectCounts()).f1
    assert next(line for line in table.splitlines() if line.startswith("| AMLL (Duke) | amll v1 |")).endswith(
        f" | {common_f1:.2f} |"
    )
    paths = write_report(rows, tmp_path / "out")
    saved = json.loads(paths["json"].read_text())
    assert saved["common_areas"] == ["nepal", "zanzibar"] and saved["models"][1]["real_source"]["kampala"] == "seen"
    assert paths["chart"].stat().st_size > 10_000

    # Counts publish recorded for exactly these test tiles are reused; --rescore recounts.
    recorded = {f"fairhaven{i}.tif": {"tp": 8, "fp": 1, "fn": 1, "tn": 90} for i in (1, 2)}
    (report_store / "amll" / "1" / "metrics.json").write_text(json.dumps({"synthetic_test": {"tiles": recorded}}))
    (again,) = build_report(report_store, ["amll"], tiny_cities, [], [], timing=False)
    assert again.synthetic_source == "recorded" and again.synthetic["fairhaven"].iou == pytest.approx(0.8)
    (fresh,) = build_report(report_store, ["amll"], tiny_cities, [], [], timing=False, rescore=True)
    assert fresh.synthetic_source == "scored" and fresh.synthetic["fairhaven"] == amll.synthetic["fairhaven"]


def test_report_cli_times_a_5000_px_tile(report_store, tmp_path, real_oam):
    done = run_cli(
        "report", "--store", str(report_store), "--models", "amll", "--real-data", str(real_oam), "--out", str(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    (row,) = json.loads((tmp_path / "report.json").read_text())["models"]
    assert row["seconds_per_5000_tile"] > 0 and "| AMLL (Duke) | amll v1 |" in done.stdout
    # raisa v2 has the whole leave-one-area-out yardstick: --set-default makes it the default.
    done = run_cli(
        "report", "--store", str(report_store), "--models", "amll,raisa:2", "--real-data", str(real_oam), "--no-timing",
        "--set-default", "--out", str(tmp_path / "chosen"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (report_store / "DEFAULT").read_text() == "raisa\n" and "default: raisa (raisa v2: pooled" in done.stdout
    assert json.loads((tmp_path / "chosen" / "report.json").read_text())["default"]["chosen"] == "raisa v2"


def _row(name: str, ious: tuple[float, float, float] | None, seconds: float | None = 10.0) -> ModelRow:
    """A model whose two areas score ``ious`` at 0.3, 0.15 and 0.6 m (IoU = tp / 100)."""
    row = ModelRow(name, 1, "effnet_unet", seconds_per_tile=seconds)
    if ious is not None:
        for r, iou in zip((0.3, 0.15, 0.6), ious, strict=True):
            tp = round(100 * iou)
            row.yardstick[r] = {a: Counts(tp, 100 - tp, 0, 500) for a in ("kampala", "zanzibar")}
    return row


def test_the_default_is_chosen_by_the_worst_resolution_among_servable_models():
    steady = _row("steady", (0.70, 0.68, 0.69))
    sharp = _row("sharp", (0.75, 0.40, 0.70))  # best at 0.3 m, lost at 0.15 m
    slow = _row("slow", (0.80, 0.80, 0.80), seconds=16.0)  # over 1.5x the current default's 10 s
    untested = _row("untested", None)
    chosen, why = choose_default([steady, sharp, slow, untested], current="sharp")
    assert chosen is steady and "68.00 % at its worst resolution" in why and "slow v1 left out" in why
    # Timed within the limit, the better model wins.
    assert choose_default([steady, _row("slow", (0.8, 0.8, 0.8), seconds=14.0)], "sharp")[0].name == "slow"
    # A yardstick missing a resolution is no yardstick.
    del steady.yardstick[0.6]
    assert choose_default([steady, untested], "sharp") == (
        None,
        "no model has leave-one-area-out scores at every yardstick resolution",
    )
    # A model with the whole yardstick is scored and shown in the report's first table.
    text = markdown([sharp, untested], current="untested")
    assert "| sharp v1 | 75.00 | 40.00 | 70.00 | 40.00 | 10.0 |" in text and "Default: sharp v1: pooled" in text
