"""Embedding arithmetic every model shares: L2 normalisation and exact nearest-neighbour search.

faiss's flat indexes answer 100,000 vectors in milliseconds; an IVF index pays off only beyond
that, so every search here is exact."""
from __future__ import annotations

import faiss
import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    x = np.asarray(x, np.float32)
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), np.float32)


class FlatIndex:
    """Exact search over ``base`` rows: squared Euclidean distances (smallest first), or with
    ``inner_product`` similarities (largest first; cosine on L2-normalised rows)."""

    def __init__(self, base: np.ndarray, *, inner_product: bool = False):
        base = np.ascontiguousarray(base, dtype=np.float32)
        self.index = (faiss.IndexFlatIP if inner_product else faiss.IndexFlatL2)(base.shape[1])
        self.index.add(base)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(distances or similarities, row positions of ``base``), each (n_queries, k), best first;
        k is capped at the size of the index."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        return self.index.search(q, min(k, len(self)))
