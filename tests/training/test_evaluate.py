import json

import numpy as np
import pytest
import rasterio

from ..conftest import run_cli, write_image, write_mask


@pytest.fixture
def scored(tmp_path):
    """Two cities, three tiles, predictions with known counts."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    rng = np.random.default_rng(0)
    for name in ("bellingham1.tif", "bellingham2.tif", "sfo1.tif"):
        g = (rng.random((300, 260)) > 0.8).astype(np.uint8) * 255
        p = g.copy()
        p[:50] = 255 - p[:50]  # wrong in the first 50 rows
        write_mask(gt / name, g)
        write_mask(pred / name, p)
    return tmp_path, gt, pred


def _expected(gt, pred, names):
    tp = fp = fn = tn = 0
    for n in names:
        with rasterio.open(gt / n) as g, rasterio.open(pred / n) as p:
            a, b = g.read(1) > 0, p.read(1) > 0
        tp += int((a & b).sum())
        fp += int((~a & b).sum())
        fn += int((a & ~b).sum())
        tn += int((~a & ~b).sum())
    return tp / (tp + fp + fn), (tp + tn) / (tp + fp + fn + tn)


def test_evaluate_cli_prints_table_and_writes_json(scored):
    root, gt, pred = scored
    out = root / "report.json"
    done = run_cli("evaluate", "--pred", str(pred), "--gt", str(gt), "--json", str(out), "--name", "my-model")
    assert done.returncode == 0, done.stderr
    header, _, row = done.stdout.splitlines()[:3]
    assert header == "| method | bellingham | sfo | Overall |"
    report = json.loads(out.read_text())
    iou_b, acc_b = _expected(gt, pred, ["bellingham1.tif", "bellingham2.tif"])
    iou_all, acc_all = _expected(gt, pred, ["bellingham1.tif", "bellingham2.tif", "sfo1.tif"])
    assert report["cities"]["bellingham"]["iou"] == pytest.approx(iou_b, abs=1e-12)
    assert report["overall"]["iou"] == pytest.approx(iou_all, abs=1e-12)
    assert report["overall"]["accuracy"] == pytest.approx(acc_all, abs=1e-12)
    assert row.startswith("| my-model | ") and f"{100 * iou_b:.2f} / {100 * acc_b:.2f}" in row
    assert row.endswith(f"{100 * iou_all:.2f} / {100 * acc_all:.2f} |")


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "bellingham2.tif: prediction missing"),
        ("shape", "bellingham2.tif: prediction is 260x299 but reference"),
        ("unknown", "Bellingham-final.tif: file name does not fit the Inria layout"),
        ("extra", "sfo9.tif: prediction has no reference tile"),
        ("nonbinary", "bellingham2.tif: not a binary mask; found values [0, 17, 255]"),
        ("mixed", "bellingham2.tif: not a binary mask; found values [0, 1, 255]"),
        ("rgb", "bellingham2.tif: expected a 1-band integer mask, got 3 band(s)"),
    ],
)
def test_evaluate_cli_errors_name_the_file(scored, breakage, message):
    root, gt, pred = scored
    target = pred / "bellingham2.tif"
    if breakage == "missing":
        target.unlink()
    elif breakage == "shape":
        write_mask(target, np.zeros((299, 260)))
    elif breakage == "unknown":
        write_mask(pred / "Bellingham-final.tif", np.zeros((300, 260)))
    elif breakage == "extra":
        write_mask(pred / "sfo9.tif", np.zeros((300, 260)))
    elif breakage in ("nonbinary", "mixed"):
        m = np.zeros((300, 260), np.uint8)
        m[0, 0], m[299, 259] = (17 if breakage == "nonbinary" else 1), 255
        write_mask(target, m)
    elif breakage == "rgb":
        write_image(target, np.zeros((3, 300, 260)))
    done = run_cli("evaluate", "--pred", str(pred), "--gt", str(gt))
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_real_imagery_scored_against_itself_is_perfect(real_oam, tmp_path):
    out = tmp_path / "self.json"
    done = run_cli("evaluate", "--pred", str(real_oam / "gt"), "--gt", str(real_oam / "gt"), "--json", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert set(report["cities"]) == {"kampala", "nepal", "zanzibar"}
    for figures in [*report["cities"].values(), report["overall"]]:
        assert figures["iou"] == 1.0 and figures["accuracy"] == 1.0
    assert "100.00 / 100.00" in done.stdout
