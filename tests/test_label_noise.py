"""Confident learning on out-of-fold predictions (clustering.sorter.label_noise): which weak labels the
sorter's version leaves out of training."""
from __future__ import annotations

import numpy as np
import pytest

from clustering.sorter.label_noise import confident_classes, confident_thresholds, label_issues


def _predictions(truth: np.ndarray, n_classes: int, seed: int = 0, sharpness: float = 4.0) -> np.ndarray:
    """Out-of-fold-like probabilities: most mass on the true class, the rest spread at random."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(truth), n_classes))
    logits[np.arange(len(truth)), truth] += sharpness
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_flipped_labels_are_found_and_right_ones_kept():
    truth = np.repeat(np.arange(4), 100)
    proba = _predictions(truth, 4)
    labels = truth.copy()
    flipped = np.array([3, 50, 120, 210, 260, 330, 399])
    labels[flipped] = (truth[flipped] + 1) % 4
    proba[flipped] = 0.01
    proba[flipped, truth[flipped]] = 0.97  # the network that never saw them is sure of their true class
    assert list(np.flatnonzero(label_issues(proba, labels))) == list(flipped)
    assert not label_issues(proba, truth).any()
    proba[3] = [0.7, 0.1, 0.1, 0.1]  # less sure than class 0's own images: the label stands
    assert 3 not in np.flatnonzero(label_issues(proba, labels))


def test_an_unsure_prediction_does_not_doubt_its_label():
    labels = np.array([0, 0, 0, 1, 1, 1])
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.45, 0.55],  # the third: other class, but not confidently
                      [0.1, 0.9], [0.05, 0.95], [0.2, 0.8]])
    t = confident_thresholds(proba, labels)
    assert t == pytest.approx([(0.9 + 0.8 + 0.45) / 3, (0.9 + 0.95 + 0.8) / 3])
    assert not label_issues(proba, labels).any()
    assert list(confident_classes(proba, labels)) == [0, 0, -1, 1, 1, -1]  # 0.55 and 0.8 < class 1's 0.88
    proba[2] = [0.05, 0.95]  # now it is as sure as the class's own images
    assert list(np.flatnonzero(label_issues(proba, labels, max_share=1.0))) == [2]


def test_a_class_nobody_carries_is_never_the_confident_one():
    labels = np.array([0, 0, 1, 1])
    proba = np.array([[0.2, 0.1, 0.7], [0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.85, 0.05]])
    assert np.isinf(confident_thresholds(proba, labels)[2])
    assert not label_issues(proba, labels).any()


def test_no_class_loses_more_than_its_share_and_the_surest_go_first():
    labels = np.repeat([0, 1], 8)
    proba = np.tile([0.2, 0.8], (16, 1))
    proba[:8] = [[0.4, 0.6], [0.1, 0.9], [0.3, 0.7], [0.2, 0.8], [0.05, 0.95], [0.95, 0.05], [0.95, 0.05],
                 [0.95, 0.05]]  # class 1's threshold is 0.8: images 1, 3 and 4 of class 0 contradict their label
    assert list(np.flatnonzero(label_issues(proba, labels, max_share=1.0))) == [1, 3, 4]
    assert list(np.flatnonzero(label_issues(proba, labels, max_share=0.3))) == [1, 4]  # 2 of 8, widest margins
    assert list(np.flatnonzero(label_issues(proba, labels, max_share=0.2))) == [4]


def test_mismatched_input_is_refused():
    with pytest.raises(ValueError, match="one probability row per label"):
        label_issues(np.ones((3, 2)) / 2, np.array([0, 1]))


def test_a_model_that_barely_learned_doubts_nothing():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 10)
    proba = rng.dirichlet(np.full(3, 20.0), size=30)  # near-uniform: thresholds about 1/3
    assert (confident_thresholds(proba, labels) < 0.4).all()
    assert label_issues(proba, labels, min_probability=0.0).any()  # plain confident learning doubts by noise
    assert not label_issues(proba, labels).any()
