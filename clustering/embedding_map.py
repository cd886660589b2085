"""The 2-D map of a run (UMAP)."""
from __future__ import annotations

import numpy as np


def umap_2d(embeddings: np.ndarray, *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """(n, 2) float32 map, scaled into [0, 1] so the page can draw it without knowing the range."""
    n = len(embeddings)
    if n < 4:  # UMAP needs a neighbourhood; a handful of points just sit on a line
        pts = np.stack([np.linspace(0, 1, n), np.full(n, 0.5)], axis=1) if n else np.zeros((0, 2))
        return pts.astype(np.float32)
    import umap  # slow import (numba): only when a map is drawn

    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, n - 1), min_dist=min_dist,
                        metric="euclidean", random_state=seed, n_jobs=1)
    pts = reducer.fit_transform(np.asarray(embeddings, dtype=np.float32))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return ((pts - lo) / np.maximum(hi - lo, 1e-12)).astype(np.float32)
