"""Which weak labels are probably wrong: confident learning on out-of-fold predictions.

A cluster name labels hundreds of images at once, so a few of them carry another region's name.
A network trained on them learns those mistakes; one that never saw an image (its fold's test
part) does not, and where it confidently names another class the label is suspect. The rule is
the confident joint of Northcutt et al. 2021 ("Confident learning: estimating uncertainty in
dataset labels"): class j's threshold is the mean probability of j over the images labelled j;
an image is flagged when, among the classes whose probability reaches their threshold, the most
probable is not its label. One guard of ours: the threshold is at least ``min_probability`` (0.5),
because cross-validation models that barely learned (a few images, near-uniform outputs) have
thresholds near 1/classes and would "confidently" doubt correct labels by noise. Hand-written
(a dozen lines) because cleanlab, which implements it, is AGPL-3.0."""
from __future__ import annotations

import numpy as np


def confident_thresholds(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class: the mean out-of-fold probability of the class over its own labelled images
    (infinite for a class nobody carries, so it is never "confidently" predicted)."""
    proba, labels = np.asarray(proba, dtype=np.float64), np.asarray(labels)
    return np.array([proba[labels == j, j].mean() if (labels == j).any() else np.inf
                     for j in range(proba.shape[1])])


def confident_classes(proba: np.ndarray, labels: np.ndarray, min_probability: float = 0.5) -> np.ndarray:
    """Per image, the most probable class among those whose probability reaches their threshold
    (and ``min_probability``); -1 where none does."""
    proba = np.asarray(proba, dtype=np.float64)
    above = proba >= np.maximum(confident_thresholds(proba, labels), min_probability)
    return np.where(above.any(axis=1), np.where(above, proba, -np.inf).argmax(axis=1), -1)


def label_issues(proba: np.ndarray, labels: np.ndarray, max_share: float = 0.2,
                 min_probability: float = 0.5) -> np.ndarray:
    """Boolean mask of the images whose label confident learning doubts.

    ``proba`` must be out-of-fold (from a model that did not train on the row). At most
    ``max_share`` of any class's images are flagged, the largest margins (confident class's
    probability minus the label's) first, so badly noisy weak labels never empty a class."""
    proba, labels = np.asarray(proba, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if proba.ndim != 2 or len(proba) != len(labels):
        raise ValueError(f"need one probability row per label; got {proba.shape} and {labels.shape}")
    confident = confident_classes(proba, labels, min_probability)
    flagged = (confident >= 0) & (confident != labels)
    rows = np.arange(len(labels))
    margin = proba[rows, confident] - proba[rows, labels]
    for j in np.unique(labels):
        mine = np.flatnonzero(flagged & (labels == j))
        at_most = int(max_share * np.sum(labels == j))
        if len(mine) > at_most:
            flagged[mine[np.argsort(-margin[mine], kind="stable")[at_most:]]] = False
    return flagged
