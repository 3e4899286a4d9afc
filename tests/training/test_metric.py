import math

import numpy as np

from training.evaluate import evaluate_dirs
from training.metric import Counts, pooled

from ..conftest import write_mask


def test_counts_on_hand_made_masks():
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]], np.uint8) * 255
    ref = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.uint8)
    c = Counts.from_masks(pred, ref)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 2, 1, 11)
    assert c.iou == 2 / 5
    assert c.accuracy == 13 / 16


def test_iou_is_undefined_without_buildings_and_accuracy_still_counts():
    c = Counts.from_masks(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8))
    assert math.isnan(c.iou)
    assert c.accuracy == 1.0
    assert c.as_dict()["iou"] is None


def test_shape_mismatch_is_refused():
    import pytest

    with pytest.raises(ValueError, match="shape"):
        Counts.from_masks(np.zeros((2, 3)), np.zeros((3, 2)))


def test_pooled_overall_differs_from_mean_of_city_ious():
    # City a: one small perfect building; city b: a big poorly found one.
    a = Counts(tp=1, fp=0, fn=0, tn=99)
    b = Counts(tp=10, fp=45, fn=45, tn=0)
    overall = pooled([a, b])
    assert overall.iou == 11 / 101
    mean_of_cities = (a.iou + b.iou) / 2
    assert abs(overall.iou - mean_of_cities) > 0.4


def test_evaluation_pools_tiles_of_a_city_before_dividing(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    # austin1: IoU 1 over 4 px; austin2: IoU 1/4 over 16 px -> pooled 8/20, mean of tiles 0.625.
    m1 = np.zeros((8, 8), np.uint8)
    m1[:2, :2] = 255
    write_mask(gt / "austin1.tif", m1)
    write_mask(pred / "austin1.tif", m1)
    g2 = np.zeros((8, 8), np.uint8)
    g2[:4, :4] = 255
    p2 = np.zeros((8, 8), np.uint8)
    p2[:2, :2] = 1  # 0/1 coding is accepted alongside 0/255 in other files
    write_mask(gt / "austin2.tif", g2)
    write_mask(pred / "austin2.tif", p2)
    # vienna1: all wrong.
    g3 = np.zeros((8, 8), np.uint8)
    g3[4:, 4:] = 255
    write_mask(gt / "vienna1.tif", g3)
    write_mask(pred / "vienna1.tif", 255 - g3)

    report = evaluate_dirs(pred, gt, progress=False)
    assert report.cities["austin"].iou == (4 + 4) / (4 + 16)
    assert report.cities["vienna"].iou == 0.0
    assert report.cities["vienna"].accuracy == 0.0
    assert report.overall.iou == 8 / (20 + 64)
    assert report.overall.accuracy == (64 + 52 + 0) / 192
    assert report.tiles["austin2.tif"].iou == 0.25
