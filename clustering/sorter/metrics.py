"""How good a sorter is, the way SAM-X reports it: top-1 and top-2 accuracy, per-class recall,
a confusion matrix, and mean +- sd over cross-validation folds."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, recall_score, top_k_accuracy_score


def evaluate(y: np.ndarray, prob: np.ndarray, classes: Sequence[str], abstained: np.ndarray | None = None) -> dict:
    """``prob`` (n, C) class probabilities; ``abstained`` marks the images the sorter called unsure.
    Accuracies count every image with its forced prediction; ``coverage`` and
    ``accepted_top1`` say what abstention keeps and how good that is."""
    y = np.asarray(y)
    labels = np.arange(len(classes))
    pred = prob.argmax(1)
    score = prob[:, 1] if len(classes) == 2 else prob  # scikit-learn's binary form
    out = {
        "n": int(len(y)),
        "top1": float(top_k_accuracy_score(y, score, k=1, labels=labels)) if len(y) else None,
        # with two classes the best two are all of them
        "top2": (float(top_k_accuracy_score(y, score, k=2, labels=labels)) if len(classes) > 2 else 1.0)
        if len(y) else None,
        "confusion": confusion_matrix(y, pred, labels=labels).tolist(),
        "recall": dict(zip(classes, recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)
                           .round(4).tolist())),
    }
    if abstained is not None and len(y):
        keep = ~np.asarray(abstained, bool)
        out["coverage"] = float(keep.mean())
        out["accepted_top1"] = float((pred[keep] == y[keep]).mean()) if keep.any() else None
    return out


def summarize(folds: Sequence[dict], keys: Sequence[str] = ("top1", "top2", "coverage", "accepted_top1")) -> dict:
    """{key: {"mean", "sd", "values"}} over folds (sample sd, ddof=1), and the summed confusion matrix."""
    out: dict = {}
    for key in keys:
        values = [f[key] for f in folds if f.get(key) is not None]
        if values:
            out[key] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                        "values": [round(v, 5) for v in values]}
    if folds:
        out["confusion"] = np.sum([f["confusion"] for f in folds], axis=0).tolist()
    return out


def precision_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Share of each query's k neighbours that carry its label, averaged (the recommender's metric)."""
    if len(query_labels) == 0:
        return float("nan")
    return float((np.asarray(neighbour_labels) == np.asarray(query_labels)[:, None]).mean())
