"""k-means on L2-normalised features, the clustering step of DeepCluster and of splits.

On the CPU scikit-learn's Lloyd is the faster one at equal work (bench/kmeans.py: faiss-cpu took
4x as long on 100,000 x 256 points, K=1000); faiss, where it has a GPU."""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from sklearn.cluster import KMeans

from training.embeddings import FlatIndex


@dataclass
class KMeansResult:
    assignments: np.ndarray  # (n,) int64 cluster index per point
    centroids: np.ndarray  # (k, d) float32
    distances: np.ndarray  # (n,) float32 squared L2 distance to the assigned centroid
    objective: float  # final sum of squared distances


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, niter: int = 20, nredo: int = 1,
           max_points_per_centroid: int = 10_000) -> KMeansResult:
    """Cluster rows of ``x`` into ``k`` groups; every group is non-empty when n >= k.

    Both libraries re-seed an empty cluster during training; the final assignment can still leave
    one empty, so those are re-seeded by hand (DeepCluster does the same in its sampler) with the
    point farthest from its centroid."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    sample = None
    if faiss.get_num_gpus() > 0:
        km = faiss.Kmeans(d, k, niter=niter, nredo=nredo, seed=int(seed) % (2**31), verbose=False, gpu=True,
                          max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1)
        km.train(x)
        centroids = km.centroids.copy()
    else:  # faiss's training sample: at most max_points_per_centroid points per centroid
        rng = np.random.default_rng(int(seed) % (2**31))
        sample = x if n <= k * max_points_per_centroid else x[rng.choice(n, k * max_points_per_centroid, replace=False)]
        km = KMeans(k, init="random", n_init=nredo, max_iter=niter, tol=0.0, algorithm="lloyd",
                    random_state=int(seed) % (2**31)).fit(sample)
        centroids = km.cluster_centers_.astype(np.float32)
    if sample is x:  # scikit-learn's labels are those of its final centroids: no second pass
        assign = km.labels_.astype(np.int64)
        dist = np.sum((x - centroids[assign]) ** 2, axis=1, dtype=np.float32)
    else:
        assign, dist = predict(x, centroids)
        assign, dist = assign.astype(np.int64), dist.astype(np.float32)
    _reseed_empty(x, assign, dist, centroids)
    return KMeansResult(assign, centroids, dist, float(dist.sum()))


def _reseed_empty(x: np.ndarray, assign: np.ndarray, dist: np.ndarray, centroids: np.ndarray) -> None:
    k = len(centroids)
    counts = np.bincount(assign, minlength=k)
    for empty in np.flatnonzero(counts == 0):
        # Take the worst-fitting point of a cluster that can spare one.
        donors = counts[assign] > 1
        cand = np.flatnonzero(donors)
        i = cand[np.argmax(dist[cand])]
        counts[assign[i]] -= 1
        assign[i] = empty
        counts[empty] = 1
        centroids[empty] = x[i]
        dist[i] = 0.0


def predict(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row: (assignments, squared distances)."""
    dist, assign = FlatIndex(centroids).search(x, 1)
    return assign[:, 0].astype(np.int64), dist[:, 0]
