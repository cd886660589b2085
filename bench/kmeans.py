"""faiss k-means against scikit-learn KMeans: the clustering step of every DeepCluster epoch.

Same 100,000 x 256 float32 points (an L2-normalised, heavily overlapping Gaussian mixture, like
whitened features: Lloyd's algorithm does not converge early, so both run every iteration),
same K, same number of iterations, one random initialisation each, all cores.

    python bench/kmeans.py [--n 100000] [--d 256] [--k 1000] [--iters 20]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def points(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)).astype(np.float32)
    x = centres[rng.integers(0, k, n)] + 3.0 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    from sklearn.cluster import KMeans

    from clustering.kmeans import kmeans

    x = points(a.n, a.d, a.k)
    print(f"{a.n} x {a.d} points, K={a.k}, {a.iters} iterations, {os.cpu_count()} cores", flush=True)

    t = time.perf_counter()
    ours = kmeans(x, a.k, seed=0, niter=a.iters, max_points_per_centroid=a.n)  # no subsampling: same work
    t_faiss = time.perf_counter() - t
    print(f"faiss   {t_faiss:8.2f} s  objective {ours.objective:.1f}", flush=True)

    t = time.perf_counter()
    sk = KMeans(a.k, init="random", n_init=1, max_iter=a.iters, tol=0.0, algorithm="lloyd", random_state=0).fit(x)
    t_sk = time.perf_counter() - t
    print(f"sklearn {t_sk:8.2f} s  objective {sk.inertia_:.1f}  ({sk.n_iter_} iterations)", flush=True)
    if sk.n_iter_ != a.iters:
        print(f"note: scikit-learn converged after {sk.n_iter_} of {a.iters} iterations; the ratio understates faiss")
    print(f"faiss is {t_sk / t_faiss:.1f}x faster" if t_sk >= t_faiss else f"faiss is {t_faiss / t_sk:.1f}x SLOWER")
    print(f"RESULT ratio={t_sk / t_faiss:.2f} faiss_s={t_faiss:.2f} sklearn_s={t_sk:.2f} "
          f"objective_faiss={ours.objective:.1f} objective_sklearn={sk.inertia_:.1f}")


if __name__ == "__main__":
    main()
