"""ml_backend.models.metrics and ml_backend.models.fusion against cases computed by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ml_backend.models import metrics
from ml_backend.models.boxes import Detections
from ml_backend.models.fusion import fuse, youden_threshold
from ml_backend.models.metrics import (
    auroc_ci,
    box_accuracy,
    box_accuracy_ci,
    detection_map,
    evaluate,
    roc_plot,
    sensitivity_at_fpr,
)

A, B = "benign", "malignant"
BOX1, BOX2, FAR = [10, 10, 20, 20], [60, 60, 30, 20], [150, 150, 10, 10]


def det(boxes, labels, scores=None) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), scores, labels)


# -- mAP@0.5 ------------------------------------------------------------------------------------
def test_perfect_prediction_is_map_1():
    gt = [det([BOX1, BOX2], [A, B]), det([BOX2], [A])]
    pred = [det([BOX1, BOX2], [A, B], [0.9, 0.8]), det([BOX2], [A], [0.7])]
    r = detection_map(gt, pred, [A, B])
    assert r["map50"] == pytest.approx(1.0)
    assert r["ap50"] == {A: pytest.approx(1.0), B: pytest.approx(1.0)}
    assert r["n_gt"] == {A: 2, B: 1}


def test_false_positive_ranked_above_the_true_positive():
    # One ground-truth box. Ranked: FP (0.9), TP (0.8): precision 0 then 1/2 at recall 1; the
    # interpolated precision is 1/2 at every one of the 101 recall points.
    gt = [det([BOX1], [A])]
    pred = [det([FAR, BOX1], [A, A], [0.9, 0.8])]
    assert detection_map(gt, pred, [A])["map50"] == pytest.approx(0.5)


def test_101_point_interpolation_by_hand():
    # Two ground-truth boxes. Ranked: TP (0.9), FP (0.8), TP (0.7): recall .5 .5 1, precision
    # 1 1/2 2/3, interpolated 1 2/3 2/3. Recall points 0.00..0.50 (51 of them) read precision 1,
    # 0.51..1.00 (50) read 2/3: AP = (51 + 50 * 2/3) / 101 = 0.834983...
    # (area under the curve would give 0.8333, VOC's 11 points 0.8485.)
    gt = [det([BOX1, BOX2], [A, A])]
    pred = [det([BOX1, FAR, BOX2], [A, A, A], [0.9, 0.8, 0.7])]
    ap = detection_map(gt, pred, [A])["map50"]
    assert ap == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-9)


def test_iou_threshold_is_half():
    gt = [det([[0, 0, 10, 10]], [A])]
    just_over = det([[0, 0, 10, 5.1]], [A], [0.9])  # IoU 0.51
    just_under = det([[0, 0, 10, 4.9]], [A], [0.9])  # IoU 0.49
    assert detection_map(gt, [just_over], [A])["map50"] == pytest.approx(1.0)
    assert detection_map(gt, [just_under], [A])["map50"] == pytest.approx(0.0)


def test_class_without_ground_truth_is_left_out():
    gt = [det([BOX1], [A])]
    pred = [det([BOX1, BOX2], [A, B], [0.9, 0.95])]  # the B box is a false positive of a class nobody has
    r = detection_map(gt, pred, [A, B])
    assert r["ap50"][B] is None and r["n_gt"][B] == 0
    assert r["map50"] == pytest.approx(1.0)


def test_wrong_class_is_a_miss():
    gt = [det([BOX1], [A])]
    r = detection_map(gt, [det([BOX1], [B], [0.9])], [A, B])
    assert r["ap50"][A] == 0.0 and r["ap50"][B] is None and r["map50"] == 0.0


def test_false_positive_on_an_image_without_ground_truth_counts():
    gt = [det([BOX1], [A]), det([], [])]
    pred = [det([BOX1], [A], [0.8]), det([BOX2], [A], [0.9])]
    assert detection_map(gt, pred, [A])["map50"] == pytest.approx(0.5)
    # ...and below the true positive it costs nothing
    pred = [det([BOX1], [A], [0.9]), det([BOX2], [A], [0.8])]
    assert detection_map(gt, pred, [A])["map50"] == pytest.approx(1.0)


def test_no_predictions_and_no_ground_truth():
    assert detection_map([det([BOX1], [A])], [det([], [])], [A, B])["ap50"] == {A: 0.0, B: None}
    r = detection_map([det([], [])], [det([BOX1], [A], [0.5])], [A])
    assert r["map50"] is None and r["ap50"] == {A: None}


def test_map_rejects_unknown_classes_and_misaligned_lists():
    with pytest.raises(ValueError, match="not in"):
        detection_map([det([BOX1], ["fracture"])], [det([], [])], [A])
    with pytest.raises(ValueError, match="ground-truth images"):
        detection_map([det([BOX1], [A])], [], [A])


def test_ground_truth_as_plain_json():
    gt = [{"boxes": [BOX1], "labels": [A]}]
    pred = [{"boxes": [BOX1], "labels": [A], "scores": [0.7]}]
    assert detection_map(gt, pred, [A])["map50"] == pytest.approx(1.0)


# -- box accuracy -------------------------------------------------------------------------------
def test_box_accuracy_by_hand():
    gt = [det([[0, 0, 10, 10], [50, 50, 10, 10]], [A, B])]
    pred = [det([[0, 0, 10, 6],  # IoU 0.6 with the first box, same class: a match
                 [0, 0, 10, 10],  # exact, but scored lower: the box is taken already
                 [50, 50, 10, 10]],  # exact, wrong class
                [A, A, A], [0.9, 0.8, 0.7])]
    r = box_accuracy(gt, pred)
    assert r["accuracy"] == pytest.approx(0.5)
    assert r["mean_iou"] == pytest.approx(0.6)
    assert (r["n_gt"], r["n_matched"]) == (2, 1)
    assert box_accuracy(gt, pred, score_threshold=0.95)["accuracy"] == 0.0
    assert box_accuracy([det([], [])], [det([BOX1], [A], [0.9])])["accuracy"] is None


def test_box_accuracy_at_the_operating_score_with_intervals():
    gt = [det([[0, 0, 10, 10]], [A]), det([[0, 0, 10, 10]], [A]), det([[0, 0, 10, 10]], [A]), det([], [])]
    pred = [det([[0, 0, 10, 8]], [A], [0.9]),  # IoU 0.8
            det([[0, 0, 10, 6]], [A], [0.5]),  # IoU 0.6, at the operating score: counts
            det([[0, 0, 10, 10]], [A], [0.4]),  # exact, but under it
            det([FAR], [A], [0.9])]
    r = box_accuracy_ci(gt, pred, score_threshold=0.5, n_boot=2000, seed=0)
    assert r["accuracy"] == pytest.approx(2 / 3) and r["mean_iou"] == pytest.approx(0.7)
    assert r["sd_iou"] == pytest.approx(np.std([0.8, 0.6], ddof=1), abs=1e-6)
    assert r["score_threshold"] == 0.5 and r["iou_threshold"] == 0.5 and r["n_matched"] == 2
    assert 0.0 <= r["accuracy_ci95"][0] < 2 / 3 < r["accuracy_ci95"][1] == 1.0
    assert 0.6 - 1e-6 <= r["mean_iou_ci95"][0] < 0.7 < r["mean_iou_ci95"][1] <= 0.8 + 1e-6
    assert 0 < r["n_boot"] < 2000 and r["n_boot_iou"] < r["n_boot"]  # resamples without a box / a match skipped
    assert box_accuracy_ci(gt, pred, score_threshold=0.0, n_boot=10)["accuracy"] == 1.0
    json.dumps(r, allow_nan=False)


# -- image level ----------------------------------------------------------------------------------
def test_auroc_of_perfect_and_inverted_scorers():
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9, 0.25, 0.6])
    assert auroc_ci(y, p, n_boot=20)["auroc"] == pytest.approx(1.0)
    assert auroc_ci(y, 1 - p, n_boot=20)["auroc"] == pytest.approx(0.0)
    assert auroc_ci([1, 1], [0.2, 0.3])["auroc"] is None


def test_auroc_bootstrap_interval():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 100)
    p = y * 0.6 + rng.random(100)
    r = auroc_ci(y, p, n_boot=100, seed=1)
    lo, hi = r["ci95"]
    assert lo < r["auroc"] < hi and hi - lo < 0.3
    assert auroc_ci(y, p, n_boot=100, seed=1) == r
    assert auroc_ci(y, p, n_boot=100, seed=2)["ci95"] != r["ci95"]


def test_bootstrap_skips_resamples_with_one_class():
    r = auroc_ci([0] * 9 + [1], np.linspace(0, 1, 10), n_boot=100, seed=0)
    assert 0 < r["n_boot"] < 100  # about (0.9)**10 of the resamples hold no abnormal image


SENS_Y = [1, 1, 1, 1, 0, 0, 0, 0]
SENS_P = [0.9, 0.8, 0.6, 0.5, 0.7, 0.5, 0.3, 0.2]
# ROC: (0, .25) (0, .5) (.25, .5) (.25, .75) then the tie at 0.5 goes diagonally to (.5, 1).


@pytest.mark.parametrize("fpr, expected", [(0.0, 0.5), (0.1, 0.5), (0.25, 0.75), (0.375, 0.875), (0.5, 1.0)])
def test_sensitivity_at_fpr_by_hand(fpr, expected):
    assert sensitivity_at_fpr(SENS_Y, SENS_P, fpr=fpr, n_boot=0)["sensitivity"] == pytest.approx(expected)


def test_sensitivity_bootstrap_is_deterministic_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(400, int), np.ones(100, int)]
    p = np.r_[rng.normal(0, 1, 400), rng.normal(2.5, 1, 100)]
    r = sensitivity_at_fpr(y, p, fpr=0.015, n_boot=100, seed=4)
    assert r["ci95"][0] <= r["sensitivity"] <= r["ci95"][1]
    assert r == sensitivity_at_fpr(y, p, fpr=0.015, n_boot=100, seed=4)
    assert 0.2 < r["sensitivity"] < 0.8


def _tied_scores(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    return y, np.round(y + rng.normal(0, 1, n), 1)  # rounded: many ties, across the classes too


@pytest.mark.parametrize("fpr", [0.0, 0.015, 0.1, 0.37, 1.0])
def test_vectorised_statistics_equal_sklearn_on_each_resample(fpr):
    y, p = _tied_scores()
    w = next(metrics._resample_counts(len(y), 300, seed=7))  # the same draws, per image
    idx = [np.repeat(np.arange(len(y)), row) for row in w]
    two = [ix for ix in idx if len(set(y[ix])) == 2]
    pos, neg = next(metrics._score_counts(y, p, 300, seed=7))
    assert len(pos) == len(two)
    np.testing.assert_allclose(metrics._auroc_of_counts(pos, neg), [roc_auc_score(y[ix], p[ix]) for ix in two],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(metrics._sensitivity_of_counts(pos, neg, fpr),
                               [metrics._sensitivity(y[ix], p[ix], fpr) for ix in two], rtol=0, atol=1e-12)


def test_resamples_with_one_class_are_skipped():
    y, p = np.array([0] * 9 + [1]), np.linspace(0, 1, 10)
    w = np.vstack(list(metrics._resample_counts(10, 500, seed=0)))
    kept = sum(len(pos) for pos, _ in metrics._score_counts(y, p, 500, seed=0))
    assert kept == int((w[:, 9] > 0).sum()) < 500 and auroc_ci(y, p, 500)["n_boot"] == kept


def test_resample_counts_are_the_old_loops_draws_in_bounded_chunks():
    rng = np.random.default_rng(5)
    loop = [np.bincount(rng.integers(0, 50, 50), minlength=50) for _ in range(230)]
    chunks = list(metrics._resample_counts(50, 230, seed=5, chunk_cells=50 * 100))
    assert [len(c) for c in chunks] == [100, 100, 30]
    np.testing.assert_array_equal(np.vstack(chunks), loop)
    assert (np.vstack(chunks).sum(1) == 50).all()


def test_bootstrap_interval_is_the_old_loops_on_the_same_seed():
    """The old interval: a Python loop resampling indices and calling sklearn per resample."""
    y, p = _tied_scores(200, seed=1)

    def loop(stat, n_boot=400, seed=3):
        rng, values = np.random.default_rng(seed), []
        for _ in range(n_boot):
            idx = rng.integers(0, len(y), len(y))
            if y[idx].min() != y[idx].max():
                values.append(stat(y[idx], p[idx]))
        return list(np.percentile(values, [2.5, 97.5])), len(values)

    ci, used = loop(roc_auc_score)
    r = auroc_ci(y, p, n_boot=400, seed=3)
    assert r["ci95"] == pytest.approx(ci, abs=1e-12) and r["n_boot"] == used
    ci, used = loop(lambda a, b: metrics._sensitivity(a, b, 0.1))
    r = sensitivity_at_fpr(y, p, fpr=0.1, n_boot=400, seed=3)
    assert r["ci95"] == pytest.approx(ci, abs=1e-12) and r["n_boot"] == used


def test_ten_thousand_resamples_by_default():
    y, p = _tied_scores(200)
    a, s = auroc_ci(y, p), sensitivity_at_fpr(y, p)
    assert a["n_boot"] == s["n_boot"] == 10_000  # 60 abnormal of 200: no resample misses a class
    assert a["ci95"][0] < a["auroc"] < a["ci95"][1]


def test_roc_plot_writes_a_png(tmp_path):
    out = roc_plot(SENS_Y, SENS_P, tmp_path / "roc.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_is_json_ready(tmp_path):
    gt = [det([BOX1], [A]), det([], []), det([BOX2], [B]), det([], [])]
    pred = [det([BOX1], [A], [0.9]), det([FAR], [A], [0.3]), det([], []), det([], [])]
    r = evaluate(gt, pred, [A, B], n_boot=20, roc_path=tmp_path / "roc.png")
    json.dumps(r, allow_nan=False)
    assert r["ap50"] == {A: pytest.approx(1.0), B: 0.0} and r["map50"] == pytest.approx(0.5)
    assert r["box_accuracy"]["accuracy"] == pytest.approx(0.5)
    assert r["auroc"]["auroc"] == pytest.approx(0.625)  # image scores (.9, .3, 0, 0) for (1, 0, 1, 0): (1 + 1 + 0 + .5) / 4
    assert (tmp_path / "roc.png").exists() and r["n_abnormal"] == 2
    assert r["best_box"]["auroc"] == r["auroc"] and r["image_score"] == "best box"
    assert r["box_accuracy_at_operating_point"]["accuracy"] == pytest.approx(0.5)  # the 0.9 box is above 0.5


def test_evaluate_scores_the_classifier_and_the_raw_detector_side_by_side():
    gt = [det([BOX1], [A]), det([], []), det([BOX2], [B]), det([], [])]
    raw = [det([BOX1], [A], [0.9]), det([FAR], [A], [0.3]), det([BOX2], [B], [0.4]), det([], [])]
    shown = [raw[0], det([], []), det([], []), det([], [])]  # fusion dropped the weak boxes
    p = [0.8, 0.1, 0.2, 0.3]
    r = evaluate(gt, shown, [A, B], p_abnormal=p, raw=raw, n_boot=50)
    json.dumps(r, allow_nan=False)
    assert r["image_score"] == "classifier"
    assert r["auroc"]["auroc"] == pytest.approx(roc_auc_score([1, 0, 1, 0], p))  # 0.75
    assert r["best_box"]["auroc"]["auroc"] == pytest.approx(1.0)  # raw best boxes .9 .3 .4 0
    assert r["best_box"]["sensitivity_at_fpr"]["sensitivity"] == pytest.approx(1.0)
    assert r["box_accuracy"]["accuracy"] == pytest.approx(0.5)  # the shown boxes


# -- fusion -----------------------------------------------------------------------------------------
def test_youden_threshold_by_hand():
    # thresholds .9 .7 .6 .4 .3 ..: (fpr, tpr) = (0, 1/3) (0, 2/3) (1/4, 2/3) (1/4, 1) (1/2, 1):
    # J = 1/3, 2/3, 5/12, 3/4, 1/2 -> c* = 0.4
    y = [0, 0, 0, 0, 1, 1, 1]
    p = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.9]
    assert youden_threshold(y, p) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        youden_threshold([1, 1], [0.3, 0.4])


def test_fuse_keeps_everything_on_abnormal_and_only_confident_boxes_on_normal():
    d = det([BOX1, BOX2, FAR, BOX1], [A, B, A, B], [0.9, 0.6, 0.5, 0.3])
    assert len(fuse(d, 0.7, threshold=0.4)) == 4
    assert len(fuse(d, 0.4, threshold=0.4)) == 4  # p >= c*
    kept = fuse(d, 0.2, threshold=0.4)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.6]) and kept.labels == [A, B]  # 0.5 is not > 0.5
    both = fuse([d, d], [0.9, 0.1], threshold=0.4)
    assert [len(x) for x in both] == [4, 2]
    with pytest.raises(ValueError):
        fuse([d], [0.1, 0.2], threshold=0.4)
