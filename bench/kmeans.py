"""samx's k-means against scikit-learn's KMeans (and faiss-cpu): the clustering step of every
DeepCluster epoch, with the share of this machine's matrix-product peak each reaches.

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


def gemm_peak(seconds: float = 2.0) -> float:
    """GFLOP/s of a large float32 matrix product on this machine: the most a Lloyd step, which is
    one such product per iteration, can reach."""
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    a @ a  # warm up the BLAS threads
    t, runs = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        a @ a
        runs += 1
    return 2 * 2048**3 * runs / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    import faiss
    from sklearn.cluster import KMeans

    from clustering.kmeans import kmeans

    x = points(a.n, a.d, a.k)
    flops = 2.0 * a.n * a.k * a.d * a.iters  # the distance products; the centroid update is n*d a step
    peak = gemm_peak()
    print(f"{a.n} x {a.d} points, K={a.k}, {a.iters} iterations, {os.cpu_count()} cores; "
          f"{flops / 1e9:.0f} GFLOP of distance products; float32 GEMM peak here {peak:.0f} GFLOP/s", flush=True)

    def timed(name, fn):
        t = time.perf_counter()
        objective = fn()
        s = time.perf_counter() - t
        print(f"{name:8s} {s:8.2f} s  {flops / s / 1e9:6.1f} GFLOP/s ({flops / s / 1e9 / peak:.0%} of peak)  "
              f"objective {objective:.1f}", flush=True)
        return s

    KMeans(10, n_init=1, max_iter=2).fit(x[:5000])  # warm up the thread pools before either is timed
    # no subsampling anywhere: the same work
    t_samx = timed("samx", lambda: kmeans(x, a.k, seed=0, niter=a.iters, max_points_per_centroid=a.n).objective)
    t_sk = timed("sklearn", lambda: KMeans(a.k, init="random", n_init=1, max_iter=a.iters, tol=0.0,
                                           algorithm="lloyd", random_state=0).fit(x).inertia_)

    def with_faiss():
        km = faiss.Kmeans(a.d, a.k, niter=a.iters, seed=0, max_points_per_centroid=a.n)
        km.train(x)
        return float(km.index.search(x, 1)[0].sum())

    t_faiss = timed("faiss", with_faiss)
    print(f"samx's k-means takes {t_samx / t_sk:.2f}x scikit-learn's time; faiss-cpu {t_faiss / t_sk:.2f}x")
    print(f"RESULT ratio={t_sk / t_samx:.2f} samx_s={t_samx:.2f} sklearn_s={t_sk:.2f} faiss_s={t_faiss:.2f} "
          f"samx_gflops={flops / t_samx / 1e9:.1f} peak_gflops={peak:.0f}")


if __name__ == "__main__":
    main()
