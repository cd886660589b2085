"""backend.detector.evaluation.judge with a stand-in detector and classifier: how the fusion
threshold c* is chosen (never on the images it is judged on) and what the metrics hold."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from backend.detector import evaluation
from backend.detector.data import LabelledImage
from ml_backend.models import fusion
from ml_backend.models.boxes import Detections

A = "lesion"
SIZE = 100


class Fixed:
    """Detector and classifier at once: what they "predict" is given."""

    classes = (A,)

    def __init__(self, dets, p):
        self.dets, self.p = dets, None if p is None else np.asarray(p, np.float64)

    def predict(self, inputs):
        return self.dets

    def predict_proba(self, inputs):
        return self.p


def world(n_patients=10, per_patient=2, abnormal_patients=(0, 1, 2, 3), seed=0):
    """Rows (two images a patient), boxes on the abnormal ones, raw detections that find them
    (plus a weak false positive everywhere), and a noisy p(abnormal), distinct for each image."""
    rng = np.random.default_rng(seed)
    rows, dets = [], []
    for i in range(n_patients * per_patient):
        patient = i // per_patient
        sick = patient in abnormal_patients and i % per_patient == 0
        gt = np.array([[10, 10, 30, 30]] if sick else np.zeros((0, 4)), np.float32)
        rows.append(LabelledImage(i + 1, f"h{i}", f"s/{i}.png", SIZE, SIZE, f"P{patient}", None, gt,
                                  [A] * len(gt), sick))
        boxes = ([[12, 10, 30, 30]] if sick else []) + [[60, 60, 20, 20]]
        dets.append(Detections(np.array(boxes, np.float32), [0.7] * sick + [0.3], [A] * len(boxes)))
    y = np.array([r.abnormal for r in rows], float)
    p = np.clip(0.5 * y + 0.25 + rng.normal(0, 0.2, len(y)), 0, 1) + 1e-6 * np.arange(len(y))
    return rows, [np.zeros((SIZE, SIZE), np.float32)] * len(rows), dets, p


def spy(monkeypatch):
    """youden_threshold answers a distinct sentinel per call and records the images (their
    p values) it chose on; fuse_one records the threshold each image is fused with."""
    chosen_on, applied = [], {}

    def youden(y, p):
        chosen_on.append(set(np.asarray(p).tolist()))
        return 0.05 + 0.1 * (len(chosen_on) - 1)

    def fuse_one(det, p, threshold, box_score=0.5):
        applied[p] = threshold
        return fusion.fuse_one(det, p, threshold, box_score)

    monkeypatch.setattr(evaluation, "youden_threshold", youden)
    monkeypatch.setattr(evaluation, "fuse_one", fuse_one)
    return chosen_on, applied


def test_c_star_is_never_chosen_on_the_images_it_is_applied_to(monkeypatch):
    rows, inputs, dets, p = world()
    chosen_on, applied = spy(monkeypatch)
    metrics, served = evaluation.judge(rows, inputs, Fixed(dets, None), Fixed(None, p))
    sentinel = {round(0.05 + 0.1 * k, 9): seen for k, seen in enumerate(chosen_on)}
    assert set(applied) == set(p.tolist())  # every image judged, each once
    for q, c in applied.items():
        assert q not in sentinel[round(c, 9)]  # never fused with a c* chosen on itself
    assert chosen_on[0] == set(p.tolist()) and served == pytest.approx(0.05)  # served: Youden on all...
    assert 0.05 not in applied.values()  # ...and never used to judge
    assert metrics["threshold_selection"] == "2-fold cross-fit by patient"
    assert metrics["fold_thresholds"] == pytest.approx([0.15, 0.25])
    # folds follow patients, and both hold both classes
    fold_of = {r.patient: applied[q] for r, q in zip(rows, p)}
    assert all(applied[q] == fold_of[r.patient] for r, q in zip(rows, p))
    for c in set(applied.values()):
        assert {r.abnormal for r, q in zip(rows, p) if applied[q] == c} == {True, False}


def test_cross_fitting_judges_with_the_other_folds_real_c_star():
    rows, inputs, dets, p = world()
    metrics, served = evaluation.judge(rows, inputs, Fixed(dets, None), Fixed(None, p))
    y = np.array([r.abnormal for r in rows], int)
    assert served == pytest.approx(fusion.youden_threshold(y, p))
    fold = evaluation.crossfit_folds(rows, y)
    for f, c in enumerate(metrics["fold_thresholds"]):
        assert c == pytest.approx(fusion.youden_threshold(y[fold != f], p[fold != f]))
    assert np.array_equal(fold, evaluation.crossfit_folds(rows, y))  # deterministic
    json.dumps(metrics, allow_nan=False)


def test_too_few_patients_to_split_says_so():
    rows, inputs, dets, p = world(abnormal_patients=(0,))  # one abnormal patient: a fold would lack them
    metrics, served = evaluation.judge(rows, inputs, Fixed(dets, None), Fixed(None, p))
    y = np.array([r.abnormal for r in rows], int)
    assert metrics["threshold_selection"] == "same images (too few to split)"
    assert metrics["fold_thresholds"] is None and served == pytest.approx(fusion.youden_threshold(y, p))


def test_a_given_threshold_is_used_as_is(monkeypatch):
    rows, inputs, dets, p = world()
    chosen_on, applied = spy(monkeypatch)
    metrics, served = evaluation.judge(rows, inputs, Fixed(dets, None), Fixed(None, p), threshold=0.42)
    assert served == 0.42 and not chosen_on and set(applied.values()) == {0.42}
    assert metrics["threshold_selection"].startswith("given")


def test_metrics_hold_both_image_scorings_and_the_operating_point():
    rows, inputs, dets, p = world()
    metrics, _ = evaluation.judge(rows, inputs, Fixed(dets, None), Fixed(None, p))
    y = [int(r.abnormal) for r in rows]
    assert metrics["auroc"]["auroc"] == pytest.approx(roc_auc_score(y, p))  # the classifier
    best = [float(d.scores.max()) for d in dets]  # raw: fusion drops the 0.3 boxes of normal-called images
    assert metrics["best_box"]["auroc"]["auroc"] == pytest.approx(roc_auc_score(y, best)) == 1.0
    op = metrics["box_accuracy_at_operating_point"]
    assert op["accuracy"] == pytest.approx(1.0) and op["score_threshold"] == 0.5 and op["n_boot"] > 0
    assert metrics["auroc"]["n_boot"] > 9000  # 10,000 drawn, the one-class ones skipped

    metrics, served = evaluation.judge(rows, inputs, Fixed(dets, None), None)
    assert metrics["threshold_selection"].startswith("no classifier") and served == 0.5
    assert metrics["auroc"]["auroc"] == metrics["best_box"]["auroc"]["auroc"] == 1.0
