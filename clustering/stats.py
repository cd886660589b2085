"""Cluster statistics a radiologist sorts by, and the scores the papers report."""
from __future__ import annotations

import numpy as np

from training.embeddings import FlatIndex
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def weighted_purity(assignments: np.ndarray, truth: np.ndarray) -> float:
    """Share of images that carry their cluster's majority label (clusters weighted by size)."""
    table = contingency_matrix(truth, assignments)  # (classes, clusters)
    return float(table.max(axis=0).sum() / table.sum())


def nmi(assignments: np.ndarray, truth: np.ndarray) -> float:
    return float(normalized_mutual_info_score(truth, assignments))


def cluster_stats(embeddings: np.ndarray, assignments: np.ndarray, centroids: np.ndarray, *,
                  truth: np.ndarray | None = None, n_representatives: int = 9, n_outliers: int = 9) -> list[dict]:
    """One dict per cluster index 0..k-1, with row positions (not ids) of its members:

    ``representatives`` nearest the centroid, ``outliers`` farthest from it, ``uncertainty`` the
    mean ratio of the distance to the own and to the next-nearest centroid (near 1: the cluster
    sits between others, likely mixed), and with ``truth`` its ``majority`` label and ``purity``."""
    k = len(centroids)
    d_own = np.sum((embeddings - centroids[assignments]) ** 2, axis=1)
    if k > 1:
        # Nearest OTHER centroid: search 2 and take whichever is not the own one.
        dist, idx = FlatIndex(centroids).search(embeddings, 2)
        d_other = np.where(idx[:, 0] == assignments, dist[:, 1], dist[:, 0])
        ratio = np.sqrt(d_own) / np.maximum(np.sqrt(d_other), 1e-12)
    else:
        ratio = np.zeros(len(embeddings))
    truth = None if truth is None else np.asarray(truth)
    by_cluster = np.lexsort((d_own, assignments))  # one sort: members of each cluster, nearest first
    bounds = np.searchsorted(assignments[by_cluster], np.arange(k + 1))
    out = []
    for c in range(k):
        rows = by_cluster[bounds[c] : bounds[c + 1]]
        s = {"index": c, "size": int(len(rows)),
             "representatives": rows[:n_representatives].tolist(),
             "outliers": rows[::-1][:n_outliers].tolist() if len(rows) > n_representatives else [],
             "mean_distance": float(d_own[rows].mean()) if len(rows) else None,
             "uncertainty": float(np.minimum(ratio[rows], 1.0).mean()) if len(rows) else None}
        if truth is not None and len(rows):
            values, counts = np.unique(truth[rows], return_counts=True)
            s["majority"] = values[np.argmax(counts)].item()
            s["purity"] = float(counts.max() / len(rows))
        out.append(s)
    return out

